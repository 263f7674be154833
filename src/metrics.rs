//! The metric model the collectors fill and the text exposition it renders to.
//!
//! Collectors add samples to a [`FamilySet`]; the poller renders the set once per poll into a
//! [`RenderedFamily`] list (text lines with the `target`/`node` labels already in place), so a
//! scrape only concatenates strings: it never formats a number and never waits on Redis.

use std::collections::HashMap;
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

/// The facts one poll of one node produced, keyed by full metric name (`redis_…`). Hashed, not
/// ordered: a poll adds a few hundred samples and renders once, so the families are sorted by
/// name once, at [`FamilySet::render`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FamilySet {
    families: HashMap<String, Family, foldhash::fast::RandomState>,
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
        let sample = Sample {
            suffix,
            labels,
            value,
        };
        // Most calls add to a family that exists: look it up by `&str` first, so only a
        // family's first sample allocates its name.
        if let Some(family) = self.families.get_mut(name) {
            family.samples.push(sample);
            return;
        }
        self.families.insert(
            name.to_owned(),
            Family {
                help: help.to_owned(),
                kind,
                samples: vec![sample],
            },
        );
    }

    /// Shorthand for an unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.add(name, help, Kind::Gauge, Vec::new(), value);
    }

    pub fn get(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    /// The value of the first sample of `family` (a one-sample gauge: `redis_up`,
    /// `redis_cluster_enabled`, a setting).
    pub fn value_of(&self, family: &str) -> Option<f64> {
        self.get(family)?.samples.first().map(|s| s.value)
    }

    /// The value of `label` on the first sample of `family`: an info metric's field
    /// (`redis_instance_info`'s role, run_id, redis_mode).
    pub fn label_of(&self, family: &str, label: &str) -> Option<&str> {
        self.get(family)?
            .samples
            .first()?
            .labels
            .iter()
            .find(|(k, _)| *k == label)
            .map(|(_, v)| v.as_str())
    }

    /// Every family, in no particular order.
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

    /// Renders every family with `base` labels (target, node, a target's own `labels:`) put
    /// first on each line, all into one buffer (one allocation per snapshot rather than one per
    /// family). A base label a sample has itself is left out of that line (the sample's own
    /// wins), so no line carries a label twice. Names and help texts come from `interner`, so a
    /// thousand nodes share one copy of each.
    pub fn render(&self, base: &[(&'static str, String)], interner: &Interner) -> Rendered {
        let samples: usize = self.families.values().map(|f| f.samples.len()).sum();
        let mut text = String::with_capacity(samples * 64);
        let mut sorted: Vec<_> = self.families.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let families = sorted
            .into_iter()
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
    families: std::sync::Mutex<HashMap<Box<str>, Arc<FamilyMeta>, foldhash::fast::RandomState>>,
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
    /// The `# HELP`/`# TYPE` lines, written once here rather than at every scrape.
    pub header: Box<str>,
}

impl FamilyMeta {
    fn new(name: &str, help: &str, kind: Kind) -> Self {
        let mut header = String::new();
        write_header(&mut header, name, help, kind);
        Self {
            name: name.into(),
            help: help.into(),
            kind,
            header: header.into(),
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
    let labels = base
        .iter()
        .filter(|(key, _)| !sample.labels.iter().any(|(own, _)| own == key))
        .chain(sample.labels.iter());
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
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
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
    if !help.bytes().any(|b| matches!(b, b'\\' | b'\n')) {
        out.push_str(help);
        return;
    }
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
        out.push_str(itoa::Buffer::new().format(value as i64));
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

impl<T: HasFamilies> HasFamilies for &T {
    fn rendered(&self) -> &Rendered {
        (**self).rendered()
    }
}

impl<T: HasFamilies> HasFamilies for Arc<T> {
    fn rendered(&self) -> &Rendered {
        (**self).rendered()
    }
}

/// Output bytes one merge step aims for. A step copies, list by list, the sample text of a run
/// of families that lies contiguous in each list's text, so memory is read sequentially
/// instead of one short piece of a thousand buffers per family.
pub const WINDOW: usize = 1 << 20;

/// Merges the families of many snapshots into one exposition: one header per family name, then
/// the samples of every snapshot under it, families in name order. Resumable: each
/// [`Merger::write_next`] writes the next window of families, so a response is produced in
/// bounded chunks.
pub struct Merger<T> {
    lists: Vec<T>,
    positions: Vec<usize>,
    window: usize,
    // Scratch reused from window to window.
    ends: Vec<usize>,
    slots: Vec<Slot>,
    pieces: Vec<Piece>,
}

/// A family of the current window: its name, the header chosen (the first list's), and where
/// its next sample bytes go in the output.
struct Slot {
    meta: Arc<FamilyMeta>,
    header: Option<Arc<FamilyMeta>>,
    len: usize,
    cursor: usize,
}

impl Slot {
    fn new(meta: Arc<FamilyMeta>) -> Self {
        Slot {
            meta,
            header: None,
            len: 0,
            cursor: 0,
        }
    }

    /// The HELP and TYPE lines written before the family's samples.
    fn header_text(&self) -> &[u8] {
        self.header.as_ref().map_or(&[], |h| h.header.as_bytes())
    }
}

/// One list's sample text for one slot.
struct Piece {
    list: u32,
    slot: u32,
    start: u32,
    end: u32,
}

impl<T: HasFamilies> Merger<T> {
    pub fn new(lists: Vec<T>) -> Self {
        Self::with_window(lists, WINDOW)
    }

    fn with_window(lists: Vec<T>, window: usize) -> Self {
        let positions = vec![0; lists.len()];
        Self {
            ends: Vec::with_capacity(lists.len()),
            lists,
            positions,
            window: window.max(1),
            slots: Vec::new(),
            pieces: Vec::new(),
        }
    }

    /// Total bytes of sample text (for sizing a buffer before writing everything).
    pub fn body_len(&self) -> usize {
        self.lists.iter().map(|l| l.rendered().text.len()).sum()
    }

    /// Appends the next window of families ([`Merger::write_window`]); false when all are
    /// written.
    pub fn write_next(&mut self, out: &mut Vec<u8>) -> bool {
        let at = out.len();
        self.write_window(out, at).is_some()
    }

    /// Writes the next window into `out` from `at` on, over the bytes already there (so a
    /// buffer reused from frame to frame is not zeroed again): `out` grows only when it is too
    /// short, and then by just what is missing, not doubled (a reused buffer doubled to a few
    /// megabytes measured 3-4.5 MB more RSS at 1000 targets). Returns where the window ends, or
    /// None when all families are written (`out` untouched). `at` must not be past `out`'s end.
    ///
    /// Every list is sorted by name and almost every list has the same families in the same
    /// order, so a window is chosen on the list with the most families left (enough of them for
    /// about `window` bytes over all lists), each list's share of it is found with one pointer
    /// comparison, and the names the other lists add are merged in, in order. Then the samples
    /// are copied list by list into their family's place in the output.
    pub fn write_window(&mut self, out: &mut Vec<u8>, at: usize) -> Option<usize> {
        let Self {
            lists,
            positions,
            window,
            ends,
            slots,
            pieces,
        } = self;
        let remaining = |i: usize| lists[i].rendered().families.len() - positions[i];
        let pilot = (0..lists.len())
            .filter(|&i| remaining(i) > 0)
            .max_by_key(|&i| remaining(i))?;
        let pilot_families = &lists[pilot].rendered().families[positions[pilot]..];
        let budget = (*window / lists.len()).max(1);
        let mut take = 0;
        let mut bytes = 0;
        while take < pilot_families.len() && (take == 0 || bytes < budget) {
            bytes += pilot_families[take].range().len();
            take += 1;
        }
        let chosen = &pilot_families[..take];
        let last = chosen[take - 1].meta.clone();

        // The window's names: the pilot's, plus any other list's up to the same last name.
        slots.clear();
        slots.extend(chosen.iter().map(|f| Slot::new(f.meta.clone())));
        ends.clear();
        for (list, &pos) in lists.iter().zip(positions.iter()) {
            let families = &list.rendered().families[pos..];
            let end = if families
                .get(take - 1)
                .is_some_and(|f| Arc::ptr_eq(&f.meta, &last))
            {
                take
            } else {
                families.partition_point(|f| same_name(&f.meta, &last) || f.meta.name < last.name)
            };
            ends.push(pos + end);
            let mine = &families[..end];
            let identical = end == take
                && mine
                    .iter()
                    .zip(chosen)
                    .all(|(a, b)| Arc::ptr_eq(&a.meta, &b.meta));
            if !identical {
                for family in mine {
                    if let Err(at) = slots.binary_search_by(|s| s.meta.name.cmp(&family.meta.name))
                    {
                        slots.insert(at, Slot::new(family.meta.clone()));
                    }
                }
            }
        }

        // Which list's text goes under which family, and how much.
        pieces.clear();
        for (index, (list, (&pos, &end))) in lists
            .iter()
            .zip(positions.iter().zip(ends.iter()))
            .enumerate()
        {
            let families = &list.rendered().families[pos..end];
            let mut slot_index = 0;
            for family in families {
                while slot_index < slots.len() && !same_name(&slots[slot_index].meta, &family.meta)
                {
                    slot_index += 1;
                }
                let Some(slot) = slots.get_mut(slot_index) else {
                    break;
                };
                let header = slot.header.get_or_insert_with(|| family.meta.clone());
                // A family whose type disagrees across targets (a Redis fork reusing a name)
                // would make the exposition invalid: keep the first type's samples only.
                if header.kind != family.meta.kind || family.start == family.end {
                    continue;
                }
                slot.len += family.range().len();
                pieces.push(Piece {
                    list: index as u32,
                    slot: slot_index as u32,
                    start: family.start,
                    end: family.end,
                });
            }
        }

        // Headers in place, room for the samples after each.
        let size: usize = slots.iter().map(|s| s.header_text().len() + s.len).sum();
        let end = at + size;
        if out.len() < end {
            out.reserve_exact(end - out.len());
            out.resize(end, 0);
        }
        let mut cursor = at;
        for slot in slots.iter_mut() {
            let header = slot.header_text();
            out[cursor..cursor + header.len()].copy_from_slice(header);
            slot.cursor = cursor + header.len();
            cursor = slot.cursor + slot.len;
        }
        for piece in pieces.iter() {
            let text = lists[piece.list as usize].rendered().text.as_bytes();
            let Some(src) = text.get(piece.start as usize..piece.end as usize) else {
                continue;
            };
            let slot = &mut slots[piece.slot as usize];
            out[slot.cursor..slot.cursor + src.len()].copy_from_slice(src);
            slot.cursor += src.len();
        }
        positions.copy_from_slice(ends);
        Some(end)
    }

    /// Writes everything left.
    pub fn write_all(&mut self, out: &mut Vec<u8>) {
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
    let mut bytes = Vec::new();
    Merger::new(lists).write_all(&mut bytes);
    // Whole lines of UTF-8 texts joined at line ends: always UTF-8.
    match String::from_utf8(bytes) {
        Ok(text) => out.push_str(&text),
        Err(err) => out.push_str(&String::from_utf8_lossy(err.as_bytes())),
    }
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
    fn a_base_label_a_sample_has_itself_is_not_written_twice() {
        let mut set = FamilySet::new();
        set.add("m", "h", Kind::Gauge, vec![("db", "db0".to_owned())], 1.0);
        set.add("n", "h", Kind::Gauge, Vec::new(), 2.0);
        let base = [("target", "t".to_owned()), ("db", "configured".to_owned())];
        let rendered = set.render(&base, &Interner::default());
        assert_eq!(
            rendered.text,
            "m{target=\"t\",db=\"db0\"} 1\nn{target=\"t\",db=\"configured\"} 2\n"
        );
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

    /// The merge as the format defines it, one family at a time: what [`Merger`] must equal.
    fn merged_by_name(lists: &[Rendered]) -> String {
        let mut names: Vec<&str> = lists
            .iter()
            .flat_map(|l| l.families.iter().map(|f| &*f.meta.name))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut out = String::new();
        for name in names {
            let mut kind = None;
            for list in lists {
                let Some(index) = list.families.iter().position(|f| &*f.meta.name == name) else {
                    continue;
                };
                let meta = &list.families[index].meta;
                let first = *kind.get_or_insert_with(|| {
                    write_header(&mut out, name, &meta.help, meta.kind);
                    meta.kind
                });
                if first == meta.kind {
                    out.push_str(list.body(index));
                }
            }
        }
        out
    }

    /// A node's families: which of twelve names it has, each a gauge or (rarely) a counter, with
    /// one to three samples.
    fn node_families() -> impl Strategy<Value = Vec<(usize, bool, usize)>> {
        proptest::collection::vec(
            (0..12usize, proptest::bool::weighted(0.1), 1..4usize),
            0..12,
        )
    }

    proptest! {
        /// Whatever families each node has, in whatever windows the merge goes (appended, or
        /// each over a reused buffer's front): one header per name, names in order, every
        /// node's samples in node order, the first type winning.
        #[test]
        fn windowed_merge_equals_merge_by_name(
            nodes in proptest::collection::vec(node_families(), 0..8),
            window in 1..400usize,
            shared_names in proptest::bool::ANY,
            stale in 0..600usize,
        ) {
            let shared = Interner::default();
            let lists: Vec<Rendered> = nodes
                .iter()
                .enumerate()
                .map(|(n, families)| {
                    let mut set = FamilySet::new();
                    for &(name, counter, samples) in families {
                        let kind = if counter { Kind::Counter } else { Kind::Gauge };
                        for s in 0..samples {
                            let labels = vec![("s", s.to_string())];
                            set.add(&format!("redis_f{name:02}"), "help", kind, labels, n as f64);
                        }
                    }
                    // Interned names, or each node its own copies (the slow comparisons).
                    let own = Interner::default();
                    let interner = if shared_names { &shared } else { &own };
                    set.render(&[("target", format!("t{n}"))], interner)
                })
                .collect();
            let want = merged_by_name(&lists);
            let mut merger = Merger::with_window(lists.iter().collect(), window);
            let mut got = Vec::new();
            while merger.write_next(&mut got) {}
            prop_assert_eq!(&String::from_utf8(got).unwrap(), &want);
            // As `/metrics` frames are made: each window written over the front of one reused
            // buffer, which holds the last window's (or anything's) bytes beyond.
            let mut merger = Merger::with_window(lists.iter().collect(), window);
            let mut reused = vec![b'#'; stale];
            let mut framed = Vec::new();
            while let Some(end) = merger.write_window(&mut reused, 0) {
                framed.extend_from_slice(&reused[..end]);
            }
            prop_assert_eq!(String::from_utf8(framed).unwrap(), want);
        }

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
