//! Issue 13: a node's log never holds the recruiter's criteria. Two searches whose criteria
//! differ only in which (encrypted) bins they accept leave the same log lines on every node,
//! numbers aside, and none names the accepted code. Its own test binary, because it captures
//! the whole process's log.

#![cfg(feature = "tfhe")]

use std::io::Write;
use std::sync::{Arc, Mutex};

use testkit::buyer;
use testkit::feasibility::*;

/// Log lines captured from the whole process (every node of an in-process cluster).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The nodes' log lines about their work on orders (not the background ledger follower, nor
/// the one-off expansion of the recruiter's key).
fn node_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("compute_node"))
        .filter(|line| !line.contains("follower"))
        .filter(|line| !line.contains("expanded a recruiter's evaluation key"))
        .map(str::to_string)
        .collect()
}

/// A line with every run of digits, hex and dots masked as one `#`: what remains is what it
/// could say about the criteria.
fn shape(line: &str) -> String {
    let mut shaped = String::with_capacity(line.len());
    for c in line.chars() {
        let masked = c.is_ascii_hexdigit() || c == '.';
        if !masked {
            shaped.push(c);
        } else if !shaped.ends_with('#') {
            shaped.push('#');
        }
    }
    shaped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_logs_do_not_depend_on_the_criteria() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let (_dir, cluster, _) = feasibility_cluster().await;
    let recruiter = buyer(&cluster).await;
    // Two searches whose criteria differ only in which (encrypted) bins are accepted.
    let start = captured.0.lock().unwrap().len();
    search(&cluster, &recruiter, "E11", None, EPSILON_ONE).await;
    let middle = captured.0.lock().unwrap().len();
    search(&cluster, &recruiter, "I10", None, EPSILON_ONE).await;
    let bytes = captured.0.lock().unwrap().clone();
    let first = String::from_utf8_lossy(&bytes[start..middle]).to_string();
    let second = String::from_utf8_lossy(&bytes[middle..]).to_string();
    let (first, second) = (node_lines(&first), node_lines(&second));
    assert!(!first.is_empty(), "the nodes log their work");
    for line in first.iter().chain(&second) {
        assert!(!line.contains("E11") && !line.contains("I10"), "{line}");
    }
    let mut first: Vec<String> = first.iter().map(|line| shape(line)).collect();
    let mut second: Vec<String> = second.iter().map(|line| shape(line)).collect();
    first.sort();
    second.sort();
    assert_eq!(
        first, second,
        "a node's log reads the same whichever criteria it evaluated"
    );
}
