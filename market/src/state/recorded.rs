//! Containers of the state that remember which of their entries were written.
//!
//! Storage keeps the state as one row per entry and rewrites, after each block, only the rows
//! the block wrote ([`State::take_changes`](super::State::take_changes)). A [`Recorded`] map
//! records the key of every entry written through it (inserted, removed, or handed out
//! mutably), and a [`RecordedCell`] records that its value was set, so a rule cannot change an
//! entry and forget to say so. Reads go straight to the inner value.
//!
//! Both serialise exactly as the value they wrap, so the state's hash does not see them.

use serde::{Serialize, Serializer};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

/// A `BTreeMap` that records the key of every entry written through it since the last
/// [`Recorded::take_written`].
#[derive(Clone, Debug)]
pub(super) struct Recorded<K, V> {
    /// The entries.
    entries: BTreeMap<K, V>,
    /// Keys written since the last [`Recorded::take_written`], present or removed.
    written: BTreeSet<K>,
}

impl<K, V> Default for Recorded<K, V> {
    fn default() -> Self {
        Recorded {
            entries: BTreeMap::new(),
            written: BTreeSet::new(),
        }
    }
}

impl<K, V> Deref for Recorded<K, V> {
    type Target = BTreeMap<K, V>;

    /// The entries, read-only: every write goes through a method that records it.
    fn deref(&self) -> &BTreeMap<K, V> {
        &self.entries
    }
}

impl<K: Serialize, V: Serialize> Serialize for Recorded<K, V> {
    /// The entries, exactly as the plain map serialises (the written keys are not state).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(serializer)
    }
}

impl<K, V> Recorded<K, V> {
    /// Whether the map holds no entry (for `skip_serializing_if`, which the inner map's
    /// method cannot be named for through the wrapper).
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Ord + Clone, V> Recorded<K, V> {
    /// Inserts `value` at `key` and records the key.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.written.insert(key.clone());
        self.entries.insert(key, value)
    }

    /// Removes the entry at `key`, if any, and records the key (storage deletes its row).
    pub(super) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (key, value) = self.entries.remove_entry(key)?;
        self.written.insert(key);
        Some(value)
    }

    /// The entry at `key`, mutably, recording the key; `None`, recording nothing, when there
    /// is no entry.
    pub(super) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (found, _) = self.entries.get_key_value(key)?;
        self.written.insert(found.clone());
        self.entries.get_mut(key)
    }

    /// The entry at `key`, inserting `V::default()` if there is none, mutably, recording the
    /// key.
    pub(super) fn get_or_insert_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.written.insert(key.clone());
        self.entries.entry(key).or_default()
    }

    /// Removes the entry at `key` and forgets that it was written: the undoing of an
    /// [`Recorded::insert`] at a key that held no entry and was not written before it, so that
    /// storage sees neither the entry nor its removal.
    pub(super) fn remove_unrecorded<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.written.remove(key);
        self.entries.remove(key)
    }

    /// Inserts an entry read back from storage: it is stored already, so not recorded.
    pub(super) fn insert_stored(&mut self, key: K, value: V) {
        self.entries.insert(key, value);
    }

    /// Drains the keys written since the last call, ascending, each with its entry now
    /// (`None`: removed).
    pub(super) fn take_written(&mut self) -> impl Iterator<Item = (K, Option<&V>)> + '_ {
        let written = std::mem::take(&mut self.written);
        let entries = &self.entries;
        written.into_iter().map(move |key| {
            let value = entries.get(&key);
            (key, value)
        })
    }
}

/// A single value that records whether it was set since the last
/// [`RecordedCell::take_written`].
#[derive(Clone, Debug, Default)]
pub(super) struct RecordedCell<T> {
    /// The value.
    value: T,
    /// Whether it was set since the last [`RecordedCell::take_written`].
    written: bool,
}

impl<T> Deref for RecordedCell<T> {
    type Target = T;

    /// The value, read-only: setting it goes through [`RecordedCell::set`], which records it.
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Serialize> Serialize for RecordedCell<T> {
    /// The value, exactly as it serialises alone.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<T> RecordedCell<T> {
    /// Sets the value and records it.
    pub(super) fn set(&mut self, value: T) {
        self.value = value;
        self.written = true;
    }

    /// Sets a value read back from storage: it is stored already, so not recorded.
    pub(super) fn set_stored(&mut self, value: T) {
        self.value = value;
    }

    /// The value if it was set since the last call, and forgets that it was.
    pub(super) fn take_written(&mut self) -> Option<&T> {
        std::mem::take(&mut self.written).then_some(&self.value)
    }
}

impl<T> RecordedCell<Option<T>> {
    /// Whether there is no value (for `skip_serializing_if`, like [`Recorded::is_empty`]).
    pub(super) fn is_none(&self) -> bool {
        self.value.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(map: &mut Recorded<u32, &'static str>) -> Vec<(u32, Option<&'static str>)> {
        map.take_written()
            .map(|(key, value)| (key, value.copied()))
            .collect()
    }

    #[test]
    fn every_write_records_its_key_once_and_reads_record_nothing() {
        let mut map = Recorded::default();
        map.insert(3, "three");
        map.insert(1, "one");
        map.insert(3, "three again");
        assert_eq!(
            written(&mut map),
            vec![(1, Some("one")), (3, Some("three again"))]
        );
        assert!(written(&mut map).is_empty(), "taking the keys drains them");

        assert_eq!(map.get(&1), Some(&"one"));
        assert!(map.contains_key(&3));
        assert_eq!(map.iter().count(), 2);
        assert!(written(&mut map).is_empty(), "reads record nothing");

        if let Some(value) = map.get_mut(&1) {
            *value = "uno";
        }
        assert!(map.get_mut(&2).is_none());
        *map.get_or_insert_default(4) = "four";
        assert_eq!(map.remove(&3), Some("three again"));
        assert_eq!(map.remove(&5), None);
        assert_eq!(
            written(&mut map),
            vec![(1, Some("uno")), (3, None), (4, Some("four"))],
            "a missing key handed out or removed is not written; a removed one reads as None"
        );
    }

    #[test]
    fn an_undone_insert_leaves_no_record() {
        let mut map = Recorded::default();
        map.insert(1, "kept");
        map.insert(2, "undone");
        assert_eq!(map.remove_unrecorded(&2), Some("undone"));
        assert_eq!(written(&mut map), vec![(1, Some("kept"))]);
        assert!(map.get(&2).is_none());
    }

    #[test]
    fn entries_read_back_from_storage_are_not_recorded() {
        let mut map = Recorded::default();
        map.insert_stored(1, "stored");
        let mut cell = RecordedCell::<u64>::default();
        cell.set_stored(7);
        assert!(written(&mut map).is_empty());
        assert_eq!(cell.take_written(), None);
        assert_eq!(*cell, 7);
        cell.set(8);
        assert_eq!(cell.take_written(), Some(&8));
        assert_eq!(cell.take_written(), None);
    }

    #[test]
    fn serialises_exactly_as_the_plain_value() {
        let mut map = Recorded::default();
        let mut plain = BTreeMap::new();
        for (key, value) in [(2u32, "b"), (1, "a"), (300, "c")] {
            map.insert(key, value);
            plain.insert(key, value);
        }
        assert_eq!(
            postcard::to_stdvec(&map).expect("encode"),
            postcard::to_stdvec(&plain).expect("encode")
        );
        let mut cell = RecordedCell::<Option<u64>>::default();
        cell.set(Some(5u64));
        assert_eq!(
            postcard::to_stdvec(&cell).expect("encode"),
            postcard::to_stdvec(&Some(5u64)).expect("encode")
        );
    }
}
