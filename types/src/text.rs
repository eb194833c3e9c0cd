//! Caller-supplied text as error messages may quote it: bounded, whatever the input, because
//! a status message travels in an HTTP/2 trailer of a few KiB.

/// Most bytes of caller-supplied text an error message quotes.
pub const MAX_EXCERPT_BYTES: usize = 100;

/// `input` as an error message may quote it: whole when at most [`MAX_EXCERPT_BYTES`] bytes,
/// else its longest prefix of at most that many bytes that ends on a character boundary,
/// followed by `… (N bytes)` with `input`'s full length.
pub fn excerpt(input: &str) -> String {
    cut_at(input, MAX_EXCERPT_BYTES)
}

/// Most bytes of an error message composed elsewhere that may quote fragments of input (a
/// query compiler's message naming a column or token), as a status message carries it.
pub const MAX_COMPOSED_MESSAGE_BYTES: usize = 400;

/// A message composed from input (see [`MAX_COMPOSED_MESSAGE_BYTES`]), cut like [`excerpt`]:
/// long enough to say what to fix, bounded whatever the input.
pub fn bounded_message(message: &str) -> String {
    cut_at(message, MAX_COMPOSED_MESSAGE_BYTES)
}

fn cut_at(input: &str, max: usize) -> String {
    if input.len() <= max {
        return input.to_owned();
    }
    let cut = (0..=max)
        .rev()
        .find(|&index| input.is_char_boundary(index))
        .unwrap_or(0);
    format!("{}… ({} bytes)", &input[..cut], input.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(excerpt("diabetes-cohort"), "diabetes-cohort");
        let hundred = "a".repeat(MAX_EXCERPT_BYTES);
        assert_eq!(excerpt(&hundred), hundred);
    }

    #[test]
    fn long_input_is_cut_at_a_character_boundary_and_its_length_given() {
        // 'é' is two bytes: 51 of them are 102 bytes, and byte 100 ends the 50th.
        let accents = "é".repeat(51);
        assert_eq!(
            excerpt(&accents),
            format!("{}… (102 bytes)", "é".repeat(50))
        );
        // '€' is three bytes: 99 = 33 × 3 is the last boundary at or below 100.
        let euros = "€".repeat(40);
        assert_eq!(excerpt(&euros), format!("{}… (120 bytes)", "€".repeat(33)));
    }
}
