//! The metric model the collectors fill and the text exposition it renders to.
//!
//! Collectors add samples to a [`FamilySet`]; the poller renders the set once per poll into a
//! [`RenderedFamily`] list (text lines with the `target`/`node` labels already in place), so a
//! scrape only concatenates strings: it never formats a number and never waits on Redis.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// The Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
    Summary,
}

impl Kind {
    /// The word used on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

/// One line of a family: an optional name suffix (`_bucket`, `_sum`, `_count`), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub suffix: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// All samples of one metric name, with its help text and type.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

/// The facts one poll of one node produced, keyed by full metric name (`redis_…`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FamilySet {
    families: BTreeMap<String, Family>,
}

impl FamilySet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample; the first call for a name fixes its help and type.
    pub fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) {
        self.add_suffixed(name, "", help, kind, labels, value);
    }

    /// Adds a sample of a histogram or summary (`suffix` is `_bucket`, `_sum`, `_count` or "").
    pub fn add_suffixed(
        &mut self,
        name: &str,
        suffix: &'static str,
        help: &str,
        kind: Kind,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) {
        let family = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                help: help.to_owned(),
                kind,
                samples: Vec::new(),
            });
        family.samples.push(Sample {
            suffix,
            labels,
            value,
        });
    }

    /// Shorthand for an unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.add(name, help, Kind::Gauge, Vec::new(), value);
    }

    pub fn get(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Family)> {
        self.families.iter()
    }

    pub fn len(&self) -> usize {
        self.families.len()
    }

    pub fn clear(&mut self) {
        self.families.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    /// A copy of the named families that exist here.
    pub fn subset(&self, names: &[&str]) -> FamilySet {
        FamilySet {
            families: self
                .families
                .iter()
                .filter(|(name, _)| names.contains(&name.as_str()))
                .map(|(name, family)| (name.clone(), family.clone()))
                .collect(),
        }
    }

    /// Moves every family of `other` into this set (samples appended where a name exists).
    pub fn merge(&mut self, other: FamilySet) {
        for (name, family) in other.families {
            match self.families.get_mut(&name) {
                Some(existing) => existing.samples.extend(family.samples),
                None => {
                    self.families.insert(name, family);
                }
            }
        }
    }

    /// Renders every family with `base` labels (target, node) put first on each line, all
    /// into one buffer (one allocation per snapshot rather than one per family). Names and
    /// help texts come from `interner`, so a thousand nodes share one copy of each.
    pub fn render(&self, base: &[(&'static str, String)], interner: &Interner) -> Rendered {
        let samples: usize = self.families.values().map(|f| f.samples.len()).sum();
        let mut text = String::with_capacity(samples * 64);
        let families = self
            .families
            .iter()
            .map(|(name, family)| {
                let start = text.len();
                for sample in &family.samples {
                    write_sample(&mut text, name, sample, base);
                }
                // A snapshot's text is a few tens of kilobytes; saturate rather than wrap.
                let offset = |at: usize| u32::try_from(at).unwrap_or(u32::MAX);
                RenderedFamily {
                    meta: interner.get(name, &family.help, family.kind),
                    start: offset(start),
                    end: offset(text.len()),
                }
            })
            .collect();
        // Snapshots live until the next poll; spare capacity would be held that long.
        text.shrink_to_fit();
        Rendered { text, families }
    }
}

/// A cumulative histogram kept across polls (slow entries, poll durations) and published into
/// each poll's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds the `_bucket`, `_sum` and `_count` lines of `name` to `set`.
    pub fn publish(&self, set: &mut FamilySet, name: &str, help: &str) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let le = vec![("le", bound.to_string())];
            set.add_suffixed(name, "_bucket", help, Kind::Histogram, le, *count as f64);
        }
        let inf = vec![("le", "+Inf".to_owned())];
        set.add_suffixed(
            name,
            "_bucket",
            help,
            Kind::Histogram,
            inf,
            self.count as f64,
        );
        set.add_suffixed(name, "_sum", help, Kind::Histogram, Vec::new(), self.sum);
        set.add_suffixed(
            name,
            "_count",
            help,
            Kind::Histogram,
            Vec::new(),
            self.count as f64,
        );
    }
}

/// One shared copy of each family's name, help text and type, for every snapshot of the
/// process.
#[derive(Debug, Default)]
pub struct Interner {
    families: std::sync::Mutex<std::collections::HashMap<Box<str>, Arc<FamilyMeta>>>,
}

impl Interner {
    pub fn get(&self, name: &str, help: &str, kind: Kind) -> Arc<FamilyMeta> {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = families.get(name) {
            if *found.help == *help && found.kind == kind {
                return found.clone();
            }
            // Another help text or type under the same name (a Redis fork): not shared.
            return Arc::new(FamilyMeta::new(name, help, kind));
        }
        let meta = Arc::new(FamilyMeta::new(name, help, kind));
        families.insert(name.into(), meta.clone());
        meta
    }
}

/// What the header of a family says.
#[derive(Debug, PartialEq)]
pub struct FamilyMeta {
    pub name: Box<str>,
    pub help: Box<str>,
    pub kind: Kind,
}

impl FamilyMeta {
    fn new(name: &str, help: &str, kind: Kind) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind,
        }
    }
}

/// A family ready for exposition: its header, shared, and where its sample lines are in the
/// snapshot's text. Sixteen bytes, since a thousand nodes hold a couple of hundred each.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedFamily {
    pub meta: Arc<FamilyMeta>,
    start: u32,
    end: u32,
}

impl RenderedFamily {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// One node's families rendered: every sample line in one text, families sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub families: Vec<RenderedFamily>,
}

impl Rendered {
    /// The sample lines of the family at `index`.
    pub fn body(&self, index: usize) -> &str {
        self.text
            .get(self.families[index].range())
            .unwrap_or_default()
    }
}

fn write_sample(out: &mut String, name: &str, sample: &Sample, base: &[(&'static str, String)]) {
    out.push_str(name);
    out.push_str(sample.suffix);
    let labels = base.iter().chain(sample.labels.iter());
    let mut first = true;
    for (key, value) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(key);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    write_value(out, sample.value);
    out.push('\n');
}

/// Label values come from Redis (command names, error prefixes, addresses, key names later):
/// escape exactly what the text format requires so no byte can break a line.
pub fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes `# HELP` text (backslash and newline only, per the format).
pub fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes a sample value the way Prometheus parses it (`+Inf`, `-Inf`, `NaN`, shortest float).
pub fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value == value.trunc() && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

/// Turns an arbitrary field name (INFO pass-through) into a valid metric-name fragment.
pub fn sanitize_name(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the `# HELP`/`# TYPE` header of a family.
pub fn write_header(out: &mut String, name: &str, help: &str, kind: Kind) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape_help(out, help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind.as_str());
    out.push('\n');
}

/// Anything that holds rendered families (a snapshot, a test's value).
pub trait HasFamilies {
    fn rendered(&self) -> &Rendered;
}

impl HasFamilies for Rendered {
    fn rendered(&self) -> &Rendered {
        self
    }
}

impl<T: HasFamilies> HasFamilies for Arc<T> {
    fn rendered(&self) -> &Rendered {
        (**self).rendered()
    }
}

/// Merges the families of many snapshots into one exposition, one family at a time: one
/// header per family name, then the samples of every snapshot under it, families in name order.
/// Resumable, so a response can be produced in bounded chunks.
pub struct Merger<T> {
    lists: Vec<T>,
    positions: Vec<usize>,
    /// The smallest family name at any list's position, found while writing the previous one.
    next: Option<Arc<FamilyMeta>>,
}

impl<T: HasFamilies> Merger<T> {
    pub fn new(lists: Vec<T>) -> Self {
        let positions = vec![0; lists.len()];
        let next = lists
            .iter()
            .filter_map(|list| list.rendered().families.first().map(|f| f.meta.clone()))
            .min_by(|a, b| a.name.cmp(&b.name));
        Self {
            lists,
            positions,
            next,
        }
    }

    /// Total bytes of sample text (for sizing a buffer before writing everything).
    pub fn body_len(&self) -> usize {
        self.lists.iter().map(|l| l.rendered().text.len()).sum()
    }

    /// Writes the next family; false when all are written. Every list is sorted by name, so
    /// this is linear in the output: one pass over the lists per family, which writes the
    /// family and finds the name that comes next.
    pub fn write_next(&mut self, out: &mut String) -> bool {
        let Some(name) = self.next.take() else {
            return false;
        };
        let mut header_kind = None;
        let mut next: Option<&Arc<FamilyMeta>> = None;
        for (list, pos) in self.lists.iter().zip(self.positions.iter_mut()) {
            let rendered = list.rendered();
            let families = &rendered.families;
            let Some(mut family) = families.get(*pos) else {
                continue;
            };
            if same_name(&family.meta, &name) {
                let meta = &family.meta;
                let kind = *header_kind.get_or_insert_with(|| {
                    write_header(out, &meta.name, &meta.help, meta.kind);
                    meta.kind
                });
                // A family whose type disagrees across targets (a Redis fork reusing a name)
                // would make the exposition invalid: keep the first type's samples only.
                if meta.kind == kind {
                    out.push_str(rendered.text.get(family.range()).unwrap_or_default());
                }
                *pos += 1;
                match families.get(*pos) {
                    Some(following) => family = following,
                    None => continue,
                }
            }
            next = match next {
                Some(best) if same_name(best, &family.meta) || best.name <= family.meta.name => {
                    Some(best)
                }
                _ => Some(&family.meta),
            };
        }
        self.next = next.cloned();
        true
    }

    /// Writes everything left.
    pub fn write_all(&mut self, out: &mut String) {
        out.reserve(self.body_len());
        while self.write_next(out) {}
    }
}

/// Names are interned, so comparing pointers settles almost every comparison.
fn same_name(a: &Arc<FamilyMeta>, b: &Arc<FamilyMeta>) -> bool {
    Arc::ptr_eq(a, b) || a.name == b.name
}

/// Merges the families of many snapshots into one exposition (see [`Merger`]).
pub fn merge_exposition<T: HasFamilies>(out: &mut String, lists: Vec<T>) {
    Merger::new(lists).write_all(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_as_prometheus_parses_them() {
        let cases = [
            (1.0, "1"),
            (0.5, "0.5"),
            (-3.0, "-3"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (1e20, "100000000000000000000"),
        ];
        for (value, want) in cases {
            let mut out = String::new();
            write_value(&mut out, value);
            assert_eq!(out, want, "value {value}");
        }
    }

    #[test]
    fn label_values_escape_quotes_backslashes_and_newlines() {
        let mut out = String::new();
        escape_label_value(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn families_merge_across_snapshots_with_one_header_each() {
        let mut a = FamilySet::new();
        a.gauge("redis_up", "up", 1.0);
        a.gauge("redis_x", "x", 2.0);
        let mut b = FamilySet::new();
        b.gauge("redis_up", "up", 0.0);
        let interner = Interner::default();
        let ra = a.render(&[("target", "a".into())], &interner);
        let rb = b.render(&[("target", "b".into())], &interner);
        assert!(
            Arc::ptr_eq(&ra.families[0].meta, &rb.families[0].meta),
            "names are shared"
        );
        let mut out = String::new();
        merge_exposition(&mut out, vec![ra, rb]);
        assert_eq!(
            out,
            "# HELP redis_up up\n# TYPE redis_up gauge\nredis_up{target=\"a\"} 1\nredis_up{target=\"b\"} 0\n\
             # HELP redis_x x\n# TYPE redis_x gauge\nredis_x{target=\"a\"} 2\n"
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    proptest! {
        /// Whatever bytes a label value holds (key names, client names), the sample stays one
        /// line and the value reads back exactly.
        #[test]
        fn any_label_value_renders_on_one_line_and_reads_back(value in "\\PC*|.*\n.*\"\\\\.*") {
            let mut set = FamilySet::new();
            set.add("redis_x", "x", Kind::Gauge, vec![("k", value.clone())], 1.0);
            let rendered = set.render(&[], &Interner::default());
            let body = rendered.body(0);
            prop_assert_eq!(body.matches('\n').count(), 1);
            let inner = body.strip_prefix("redis_x{k=\"").unwrap().strip_suffix("\"} 1\n").unwrap();
            prop_assert_eq!(unescape(inner), value);
        }
    }
}
