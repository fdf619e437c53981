//! Label cardinality cap: label values come from untrusted wire data (tool names,
//! error types), so each label admits at most `cap` distinct values; later ones are
//! reported as `other`.
use std::collections::{HashMap, HashSet};

/// What a value past the cap becomes.
pub const OTHER: &str = "other";
/// Longer values are cut: a label value is a name, not a payload.
const MAX_VALUE_LEN: usize = 128;

#[derive(Debug)]
pub struct LabelCap {
    cap: usize,
    seen: HashMap<&'static str, HashSet<String>>,
    overflow: HashMap<&'static str, u64>,
}

impl LabelCap {
    pub fn new(cap: usize) -> Self {
        LabelCap {
            cap: cap.max(1),
            seen: HashMap::new(),
            overflow: HashMap::new(),
        }
    }

    /// The value to export for `label`: `value` itself while the label has room (or
    /// already admitted it), else `other`.
    pub fn admit(&mut self, label: &'static str, value: &str) -> String {
        let value = truncate(value);
        let set = self.seen.entry(label).or_default();
        if set.contains(value) {
            return value.to_string();
        }
        if set.len() < self.cap {
            set.insert(value.to_string());
            return value.to_string();
        }
        *self.overflow.entry(label).or_default() += 1;
        OTHER.to_string()
    }

    /// Values mapped to `other`, per label.
    pub fn overflow(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.overflow.iter().map(|(k, v)| (*k, *v))
    }

    pub fn distinct(&self, label: &str) -> usize {
        self.seen.get(label).map_or(0, HashSet::len)
    }
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_VALUE_LEN {
        return s;
    }
    let mut end = MAX_VALUE_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_become_other_and_admitted_values_stay() {
        let mut cap = LabelCap::new(3);
        assert_eq!(cap.admit("function", "a"), "a");
        assert_eq!(cap.admit("function", "b"), "b");
        assert_eq!(cap.admit("function", "c"), "c");
        assert_eq!(cap.admit("function", "d"), OTHER);
        assert_eq!(cap.admit("function", "a"), "a");
        // Each label has its own budget.
        assert_eq!(cap.admit("library", "d"), "d");
        assert_eq!(cap.distinct("function"), 3);
        assert_eq!(cap.overflow().collect::<Vec<_>>(), vec![("function", 1)]);
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let mut cap = LabelCap::new(10);
        let long = "é".repeat(200);
        let v = cap.admit("function", &long);
        assert!(v.len() <= MAX_VALUE_LEN);
        assert!(long.starts_with(&v));
    }
}
