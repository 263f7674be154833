//! The fuzz targets' checks (`fuzz/checks.rs`) run as proptest tests, so every parser meets
//! hostile input in the ordinary test suite on stable Rust too; `cargo fuzz` (docs/fuzzing.md)
//! runs the same checks guided by coverage, for longer.

#[path = "../fuzz/checks.rs"]
mod checks;

use proptest::prelude::*;

/// Text made of the pieces each format is built from, so the checks reach past the first
/// line's shape; plus the checked-in seeds.
fn lines_of(piece: &'static str, sep: &'static str) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(piece, 0..24).prop_map(move |lines| lines.join(sep).into_bytes())
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out
}

#[test]
fn the_seeds_pass_every_check() {
    for data in seeds("info") {
        checks::info(&data);
    }
    for data in seeds("cluster_nodes") {
        checks::cluster_nodes(&data);
    }
    for data in seeds("config") {
        checks::config(&data);
    }
    for data in seeds("label_value") {
        checks::label_value(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn info_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        checks::info(&data);
    }

    #[test]
    fn info_shaped(data in lines_of(
        "(# [A-Za-z]{1,10}|[a-z_]{1,16}:[ -~]{0,30}|db[0-9]{1,2}:keys=[0-9-]{1,5},expires=[0-9a-z]{0,4}|slave[0-9]:ip=[0-9.:]{0,15},port=[0-9-]{0,6},state=[a-z]{0,8},offset=[0-9-]{0,20},lag=[0-9-]{0,4}|cmdstat_[a-z|]{1,10}:calls=[0-9-]{0,20},usec=[0-9e.-]{0,10},usec_per_call=[0-9.]{0,8})",
        "\r\n",
    )) {
        checks::info(&data);
    }

    #[test]
    fn cluster_nodes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        checks::cluster_nodes(&data);
    }

    #[test]
    fn cluster_nodes_shaped(data in lines_of(
        "[0-9a-f]{1,40} [0-9.]{0,15}:[0-9]{0,10}(@[0-9]{0,10})?(,[a-z.]{0,10})? (myself,)?(master|slave|fail\\?|handshake|noaddr)(,fail)? (-|[0-9a-f]{1,40}) [0-9]{1,13} [0-9]{1,13} [0-9]{1,20} (connected|disconnected)( [0-9]{1,10}(-[0-9]{1,10})?){0,4}( \\[[0-9]{1,5}-[<>]-[0-9a-f]{1,8}\\])?",
        "\n",
    )) {
        checks::cluster_nodes(&data);
    }

    #[test]
    fn config_any_text(data in "\\PC{0,300}") {
        checks::config(data.as_bytes());
    }

    #[test]
    fn config_shaped(data in lines_of(
        "(listen|poll_interval|poll_timeout|targets|  - name|    url|    tls|      ca_file|      server_name|scrape_allow|  - hosts|    ports|alerting|  thresholds|    RedisDown|basic_auth_users|  [a-z]{1,5}|tls_server_config|  cert_file|  key_file|web_config_file): ?([a-z0-9:/.\"{}\\[\\], $*-]{0,30})?",
        "\n",
    )) {
        checks::config(&data);
    }

    #[test]
    fn label_value_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        checks::label_value(&data);
    }
}
