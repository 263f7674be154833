//! What each fuzz target checks, shared by the cargo-fuzz targets (`fuzz_targets/*.rs`) and
//! by `tests/fuzz_checks.rs`, which runs the same checks as proptest tests on stable Rust in the
//! ordinary test suite. Each function takes arbitrary bytes and panics when a property fails.

use redis_lookout::collector::{cluster, info};
use redis_lookout::config::Config;
use redis_lookout::metrics::{escape_label_value, FamilySet, Interner};
use redis_lookout::web_config::WebConfig;
use std::path::Path;

/// Every sample renders as exactly one line, `name{labels} value`, with a valid metric name
/// and a value Prometheus reads (a stray line break in a label would make two lines).
fn assert_renders_cleanly(set: &FamilySet) {
    let rendered = set.render(&[("target", "fuzz".to_owned())], &Interner::default());
    let samples: usize = set.iter().map(|(_, family)| family.samples.len()).sum();
    let mut lines = 0;
    for index in 0..rendered.families.len() {
        for line in rendered.body(index).split_terminator('\n') {
            lines += 1;
            let name_end = line.find(['{', ' ']).expect("a sample line has a value");
            let name = &line[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            let value = line.rsplit_once(' ').map_or("", |(_, v)| v);
            assert!(
                matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok(),
                "bad value in {line:?}"
            );
        }
    }
    assert_eq!(lines, samples, "samples and lines differ");
}

/// INFO text: parsed, turned into families (with and without a known database count), the
/// replica lines read, and rendered; nothing panics and the exposition stays well formed.
pub fn info(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = info::parse_info(&text);
    let mut set = FamilySet::new();
    info::info_families(&parsed, None, &mut set);
    info::info_families(&parsed, Some(16), &mut set);
    let _ = info::replica_lines(&parsed);
    assert_renders_cleanly(&set);
}

/// CLUSTER NODES and CLUSTER INFO text: parsed without panics; no node owns more than the
/// 16384 slots a cluster has.
pub fn cluster_nodes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for node in cluster::parse_cluster_nodes(&text) {
        assert!(node.slots <= 16384, "{} slots", node.slots);
    }
    let mut set = FamilySet::new();
    cluster::cluster_info_families(&text, &mut set);
    assert_renders_cleanly(&set);
}

/// The config file and the web config file: any text is accepted or refused with an error,
/// never a panic; an error names the file.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // File names in the text are opened (certificates): keep the fuzzer off devices.
    if text.contains("/dev") || text.contains("/proc") || text.contains("/sys") {
        return;
    }
    let path = Path::new("/nonexistent/fuzz.yaml");
    if let Err(e) = Config::from_yaml(path, &text) {
        assert!(e.to_string().contains("fuzz.yaml"), "{e}");
    }
    if let Err(e) = WebConfig::parse(path, &text) {
        assert!(e.to_string().contains("fuzz.yaml"), "{e}");
    }
}

/// Label escaping: the escaped value holds no raw newline, every quote is escaped, and
/// unescaping gives the value back.
pub fn label_value(data: &[u8]) {
    let value = String::from_utf8_lossy(data);
    let mut out = String::new();
    escape_label_value(&mut out, &value);
    assert!(!out.contains('\n'));
    let mut back = String::new();
    let mut chars = out.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => back.push('\n'),
                Some('\\') => back.push('\\'),
                Some('"') => back.push('"'),
                other => panic!("stray escape \\{other:?} in {out:?}"),
            },
            '"' => panic!("unescaped quote in {out:?}"),
            c => back.push(c),
        }
    }
    assert_eq!(back, value);
}
