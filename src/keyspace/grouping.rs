//! Which group a key belongs to: a configured prefix (longest match wins), else a pattern
//! discovered from the key's own segments, with id-like segments and crowded levels folded
//! into `*`, under a hard cap on distinct groups.

use std::collections::{HashMap, HashSet};

/// The group of keys that matched nothing and did not fit under the cap.
pub const OTHER: &str = "other";
/// Distinct values one level may show before it is treated as an id (`*`).
pub const CROWDED_LEVEL: usize = 64;

/// True for segments that name one entity rather than a kind of thing: numbers, hex ids,
/// UUIDs, IPv4 addresses, dates and times, long base64-ish tokens. A Redis Cluster hash tag's
/// braces are not part of what the segment names: `{123}` and the `{user` / `123}` halves of
/// `{user:123}` are judged without them.
pub fn is_id_like(segment: &str) -> bool {
    let segment = segment.trim_start_matches('{').trim_end_matches('}');
    if segment.is_empty() {
        return false;
    }
    // An e-mail address (or user@host): one person.
    if segment.contains('@') {
        return true;
    }
    let bytes = segment.as_bytes();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == bytes.len() {
        return true;
    }
    let hex = bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-');
    if hex && bytes.len() >= 8 && digits > 0 {
        return true; // hex ids, UUIDs
    }
    // 10.0.0.1, 2026-11-22, 2026-11-22T10:00, 12.5
    if digits * 2 >= bytes.len()
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b".-/T_".contains(b))
    {
        return true;
    }
    // Random tokens: long, mixed letters and digits with no vowels pattern to speak of.
    bytes.len() >= 20
        && digits >= 3
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=+/".contains(b))
}

/// Assigns keys to groups. Its memory is bounded: at most `max_groups` groups, and per level
/// at most [`CROWDED_LEVEL`] remembered children before the level folds into `*`.
#[derive(Debug)]
pub struct Grouper {
    /// Configured prefixes, longest first.
    prefixes: Vec<String>,
    auto: bool,
    delimiter: char,
    max_segments: usize,
    max_groups: usize,
    groups: HashSet<String>,
    /// Parent pattern → distinct child segments seen (until the level is crowded).
    children: HashMap<String, HashSet<String>>,
    crowded: HashSet<String>,
}

impl Grouper {
    pub fn new(prefixes: &[String], auto: bool, delimiter: char, max_groups: usize) -> Self {
        let mut prefixes = prefixes.to_vec();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self {
            prefixes,
            auto,
            delimiter,
            max_segments: 4,
            max_groups: max_groups.max(1),
            groups: HashSet::new(),
            children: HashMap::new(),
            crowded: HashSet::new(),
        }
    }

    /// The group of `key` (bytes: key names need not be UTF-8).
    pub fn group(&mut self, key: &[u8]) -> String {
        let text = String::from_utf8_lossy(key);
        if let Some(prefix) = self.prefixes.iter().find(|p| text.starts_with(p.as_str())) {
            return prefix.clone();
        }
        if !self.auto {
            return OTHER.to_owned();
        }
        let pattern = self.pattern(&text);
        if self.groups.contains(&pattern) {
            return pattern;
        }
        if self.groups.len() >= self.max_groups {
            return OTHER.to_owned();
        }
        self.groups.insert(pattern.clone());
        pattern
    }

    fn pattern(&mut self, key: &str) -> String {
        let segments: Vec<&str> = key.split(self.delimiter).collect();
        if segments.len() == 1 {
            // No structure to group by: one group for all such keys.
            return if is_id_like(key) {
                "*".to_owned()
            } else {
                format!("{}*", first_chars(key, 3))
            };
        }
        let mut pattern = String::new();
        let delimiter = self.delimiter.to_string();
        for (depth, segment) in segments.iter().enumerate() {
            if depth == self.max_segments {
                pattern.push('*');
                break;
            }
            if depth > 0 {
                pattern.push_str(&delimiter);
            }
            let parent = pattern.clone();
            let folded =
                is_id_like(segment) || self.crowded.contains(&parent) || segment.len() > 64;
            if folded {
                pattern.push('*');
                continue;
            }
            let seen = self.children.entry(parent.clone()).or_default();
            seen.insert((*segment).to_owned());
            if seen.len() > CROWDED_LEVEL {
                self.children.remove(&parent);
                self.crowded.insert(parent);
                pattern.push('*');
            } else {
                pattern.push_str(segment);
            }
        }
        // Every segment kept as written: the pattern is this one key's name, and key names are
        // exported only when the config says so (they can carry personal data). Its last
        // segment is shown as `*`.
        if !pattern.contains('*') {
            if let Some(cut) = pattern.rfind(self.delimiter) {
                pattern.truncate(cut + self.delimiter.len_utf8());
            }
            pattern.push('*');
        }
        pattern
    }

    /// Forgets discovered groups (at the start of a pass, so they follow the keyspace).
    pub fn reset_discovery(&mut self) {
        self.groups.clear();
        self.children.clear();
        self.crowded.clear();
    }
}

fn first_chars(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The `must_expire` prefix `key` falls under, if any (the longest).
pub fn must_expire<'a>(key: &[u8], prefixes: &'a [String]) -> Option<&'a str> {
    longest_prefix(key, prefixes, String::as_str).map(String::as_str)
}

/// The entry whose prefix (`prefix_of`) is the longest that `key` starts with.
pub fn longest_prefix<'a, T>(
    key: &[u8],
    entries: &'a [T],
    prefix_of: impl Fn(&T) -> &str,
) -> Option<&'a T> {
    entries
        .iter()
        .filter(|e| key.starts_with(prefix_of(e).as_bytes()))
        .max_by_key(|e| prefix_of(e).len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fold_into_stars() {
        for id in [
            "123",
            "9f86d081884c7d65",
            "550e8400-e29b-41d4-a716-446655440000",
            "10.0.0.1",
            "2026-11-22",
            "1700000000",
        ] {
            assert!(is_id_like(id), "{id}");
        }
        for word in [
            "user", "profile", "auth", "rl", "lock", "product", "session", "deadbeef",
        ] {
            assert!(!is_id_like(word), "{word}");
        }
    }

    #[test]
    fn operator_key_families_become_the_expected_patterns() {
        let mut g = Grouper::new(&[], true, ':', 100);
        let cases = [
            ("cache:user:42:profile", "cache:user:*:profile"),
            ("rl:10.0.0.1:1700000000", "rl:*:*"),
            (
                "session:auth:550e8400-e29b-41d4-a716-446655440000",
                "session:auth:*",
            ),
            ("lock:product:77", "lock:product:*"),
            ("saga:9f86d081884c7d65", "saga:*"),
            // Never a whole key name: an e-mail folds, and so does the leaf of a key whose
            // segments all look like words.
            ("user:alice@example.com:settings", "user:*:settings"),
            ("email:bob@example.com", "email:*"),
            ("config:feature:darkmode", "config:feature:*"),
            // Hash tags, as the operators' cluster keys carry them.
            ("cache:user:{123}:profile", "cache:user:*:profile"),
            ("{user:123}:cart", "{user:*:cart"),
        ];
        for (key, want) in cases {
            assert_eq!(g.group(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn configured_prefixes_win_longest_first() {
        let prefixes = vec!["session:".to_owned(), "session:auth:".to_owned()];
        let mut g = Grouper::new(&prefixes, true, ':', 100);
        assert_eq!(g.group(b"session:auth:x"), "session:auth:");
        assert_eq!(g.group(b"session:other"), "session:");
    }

    #[test]
    fn crowded_levels_fold_and_the_cap_holds_on_random_prefixes() {
        let mut g = Grouper::new(&[], true, ':', 100);
        // Names that look like words, not ids, but far too many of them.
        for i in 0..10_000 {
            let key = format!("tenant{}x:orders:{}", base26(i), i);
            g.group(key.as_bytes());
        }
        let mut distinct = HashSet::new();
        for i in 0..10_000 {
            distinct.insert(g.group(format!("tenant{}x:orders:{}", base26(i), i).as_bytes()));
        }
        assert!(distinct.len() <= 101, "{} groups", distinct.len());
        assert!(distinct.contains("*:orders:*"), "{distinct:?}");
        // 100k random unique prefixes without a delimiter: still under the cap.
        let mut g = Grouper::new(&[], true, ':', 100);
        let mut seen = HashSet::new();
        for i in 0..100_000u64 {
            let key = format!("{}:{}", base26(i * 7919 + 13), i);
            seen.insert(g.group(key.as_bytes()));
        }
        assert!(seen.len() <= 101, "{} groups", seen.len());
    }

    #[test]
    fn odd_bytes_never_panic() {
        let mut g = Grouper::new(&[], true, ':', 100);
        g.group(b"\xff\xfe:\x00:\n\"\\");
        g.group(&[b'a'; 10_240]);
        g.group(b"");
        assert_eq!(
            must_expire(b"session:x", &["session:".into(), "s".into()]),
            Some("session:")
        );
    }

    fn base26(mut n: u64) -> String {
        let mut s = String::new();
        loop {
            s.push((b'a' + (n % 26) as u8) as char);
            n /= 26;
            if n == 0 {
                return s;
            }
        }
    }
}
