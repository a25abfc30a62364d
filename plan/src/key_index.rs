//! A hash index over a list whose items have string keys: takes keys and their positions in
//! the caller's list, and gives back the position of a key. It holds 4-byte positions only and
//! compares keys in the caller's list, so the index of a large file stays small enough to be
//! in cache. The compiler's name table and the graph builder's node ids use it: with the keys
//! inside, their tables spread over megabytes on a 100k-line pipeline and cost a cache miss on
//! most lookups.

use std::hash::BuildHasher;

#[derive(Debug)]
pub struct KeyIndex {
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl KeyIndex {
    pub fn with_capacity(n: usize) -> Self {
        KeyIndex {
            table: hashbrown::HashTable::with_capacity(n),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The position of `key`, where `key_at` gives the key of a position in the list.
    pub fn find<'k>(&self, key: &str, key_at: impl Fn(u32) -> Option<&'k str>) -> Option<u32> {
        self.table
            .find(self.hasher.hash_one(key), |&at| key_at(at) == Some(key))
            .copied()
    }

    /// Records that `key`, which `find` does not know, is at position `at`.
    pub fn insert<'k>(&mut self, key: &str, at: u32, key_at: impl Fn(u32) -> Option<&'k str>) {
        debug_assert!(
            self.find(key, &key_at).is_none(),
            "`{key}` is indexed already"
        );
        let hasher = &self.hasher;
        // Rehashing reads the keys of the positions already recorded, which are all in the
        // list; the table is sized up front, so it rarely happens.
        self.table.insert_unique(hasher.hash_one(key), at, |&i| {
            let k = key_at(i);
            debug_assert!(k.is_some(), "position {i} is indexed but not in the list");
            k.map_or(0, |k| hasher.hash_one(k))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::KeyIndex;

    #[test]
    fn finds_every_key_at_its_position_after_growing() {
        let keys: Vec<String> = (0..1000).map(|i| format!("name_{i}")).collect();
        // Capacity 1 makes the table grow, and rehash through `key_at`, many times.
        let mut index = KeyIndex::with_capacity(1);
        for (i, k) in keys.iter().enumerate() {
            let key_at = |at: u32| keys.get(at as usize).map(String::as_str);
            assert_eq!(index.find(k, key_at), None);
            index.insert(k, i as u32, key_at);
        }
        let key_at = |at: u32| keys.get(at as usize).map(String::as_str);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.find(k, key_at), Some(i as u32));
        }
        assert_eq!(index.find("name_1000", key_at), None);
        assert_eq!(index.find("", key_at), None);
    }
}
