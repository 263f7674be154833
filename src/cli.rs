//! Command-line flags. redis_exporter's names and environment variables are kept for the options
//! both tools have, and Go's single-dash spelling (`-redis.addr=…`) is accepted too, so existing
//! unit files and container commands work unchanged.

use crate::config::{LogFormat, Overrides};
use clap::Parser;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Prometheus exporter for Redis: polls every node on its own schedule, serves snapshots.
#[derive(Debug, Parser)]
#[command(name = "redis-lookout", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// YAML configuration file (see config.example.yaml).
    #[arg(long, global = true, env = "REDIS_LOOKOUT_CONFIG")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print a summary and exit (0 valid, 2 invalid).
    #[arg(long, global = true)]
    pub check_config: bool,

    /// Address of the Redis to watch: redis://host:port, rediss://host:port, unix:///path or host:port.
    #[arg(global = true, long = "redis.addr", env = "REDIS_ADDR")]
    pub redis_addr: Option<String>,

    /// ACL user name for targets that set none (in the file or the URL).
    #[arg(global = true, long = "redis.user", env = "REDIS_USER")]
    pub redis_user: Option<String>,

    /// Password for targets that set none (in the file or the URL). Prefer --redis.password-file:
    /// a flag is visible in the process list.
    #[arg(
        global = true,
        long = "redis.password",
        env = "REDIS_PASSWORD",
        hide_env_values = true
    )]
    pub redis_password: Option<String>,

    /// File holding the password (or redis_exporter's JSON map of URL to password).
    #[arg(
        global = true,
        long = "redis.password-file",
        env = "REDIS_PASSWORD_FILE"
    )]
    // A string, not a path: an empty value means none (see `overrides`), where clap's path
    // parser would refuse it.
    pub redis_password_file: Option<String>,

    /// Address to serve HTTP on (default `:9121`, i.e. `[::]:9121`: IPv6 and IPv4).
    #[arg(
        global = true,
        long = "web.listen-address",
        env = "REDIS_EXPORTER_WEB_LISTEN_ADDRESS"
    )]
    pub listen: Option<String>,

    /// Path of the metrics endpoint (default /metrics).
    #[arg(
        global = true,
        long = "web.telemetry-path",
        env = "REDIS_EXPORTER_WEB_TELEMETRY_PATH"
    )]
    pub telemetry_path: Option<String>,

    /// Log format: txt or json.
    #[arg(
        global = true,
        long = "log-format",
        env = "REDIS_EXPORTER_LOG_FORMAT",
        value_enum
    )]
    pub log_format: Option<LogFormat>,

    /// Log level: error, warn, info, debug, trace (or target=level directives).
    #[arg(
        global = true,
        long = "log-level",
        env = "REDIS_EXPORTER_LOG_LEVEL",
        value_parser = crate::config::check_log_level
    )]
    pub log_level: Option<String>,

    /// CA certificate file (PEM) to verify a rediss:// server with (default: system roots).
    #[arg(
        global = true,
        long = "tls-ca-cert-file",
        env = "REDIS_EXPORTER_TLS_CA_CERT_FILE"
    )]
    pub tls_ca_cert_file: Option<PathBuf>,

    /// Client certificate file (PEM) for mTLS to Redis; needs --tls-client-key-file.
    #[arg(
        global = true,
        long = "tls-client-cert-file",
        env = "REDIS_EXPORTER_TLS_CLIENT_CERT_FILE"
    )]
    pub tls_client_cert_file: Option<PathBuf>,

    /// Client private key file (PEM, unencrypted) for mTLS to Redis.
    #[arg(
        global = true,
        long = "tls-client-key-file",
        env = "REDIS_EXPORTER_TLS_CLIENT_KEY_FILE"
    )]
    pub tls_client_key_file: Option<PathBuf>,

    /// Name the Redis server's certificate must carry, when not the address's host.
    #[arg(
        global = true,
        long = "tls-server-name",
        env = "REDIS_EXPORTER_TLS_SERVER_NAME"
    )]
    pub tls_server_name: Option<String>,

    /// Do not verify the Redis server's certificate (encrypted, not authenticated).
    #[arg(
        global = true,
        long = "skip-tls-verification",
        env = "REDIS_EXPORTER_SKIP_TLS_VERIFICATION",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub skip_tls_verification: Option<bool>,

    /// redis_exporter's: --redis.addr is a Redis Cluster seed; every node is found and polled.
    #[arg(
        global = true,
        long = "is-cluster",
        env = "REDIS_EXPORTER_IS_CLUSTER",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub is_cluster: Option<bool>,

    /// redis_exporter's: log at debug level (unless --log-level says otherwise).
    #[arg(
        global = true,
        long = "debug",
        env = "REDIS_EXPORTER_DEBUG",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub debug: Option<bool>,

    /// redis_exporter's: caps the default poll timeout (3s, fitted to the poll interval).
    #[arg(
        global = true,
        long = "connection-timeout",
        env = "REDIS_EXPORTER_CONNECTION_TIMEOUT",
        value_parser = positive_duration
    )]
    pub connection_timeout: Option<Duration>,

    /// redis_exporter's: leave out the exporter's own process_* metrics.
    #[arg(
        global = true,
        long = "redis-only-metrics",
        env = "REDIS_EXPORTER_REDIS_ONLY_METRICS",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub redis_only_metrics: Option<bool>,

    /// redis_exporter's; accepted for compatibility: redis-lookout always publishes
    /// redis_total_system_memory_bytes.
    #[arg(
        global = true,
        long = "include-system-metrics",
        env = "REDIS_EXPORTER_INCL_SYSTEM_METRICS",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true",
        hide = true
    )]
    pub include_system_metrics: Option<bool>,

    /// redis_exporter's; accepted for compatibility: the round trip of every poll is
    /// published as redis_exporter_last_scrape_ping_time_seconds anyway.
    #[arg(
        global = true,
        long = "ping-on-connect",
        env = "REDIS_EXPORTER_PING_ON_CONNECT",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true",
        hide = true
    )]
    pub ping_on_connect: Option<bool>,

    /// redis_exporter's; accepted for compatibility: redis-lookout sends no LATENCY HISTOGRAM.
    #[arg(
        global = true,
        long = "exclude-latency-histogram-metrics",
        env = "REDIS_EXPORTER_EXCLUDE_LATENCY_HISTOGRAM_METRICS",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true",
        hide = true
    )]
    pub exclude_latency_histogram_metrics: Option<bool>,

    /// redis_exporter's; accepted for compatibility: redis-lookout always names its
    /// connections (CLIENT SETNAME redis-lookout).
    #[arg(
        global = true,
        long = "set-client-name",
        env = "REDIS_EXPORTER_SET_CLIENT_NAME",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true",
        hide = true
    )]
    pub set_client_name: Option<bool>,

    /// redis_exporter's: keys (SCAN globs, `db3=pattern`, comma-separated) whose length is
    /// published, as `watch: keys`.
    #[arg(
        global = true,
        long = "check-keys",
        env = "REDIS_EXPORTER_CHECK_KEYS",
        value_delimiter = ','
    )]
    pub check_keys: Vec<String>,

    /// redis_exporter's: single keys (`db3=name`, comma-separated), as `watch: keys`.
    #[arg(
        global = true,
        long = "check-single-keys",
        env = "REDIS_EXPORTER_CHECK_SINGLE_KEYS",
        value_delimiter = ','
    )]
    pub check_single_keys: Vec<String>,

    /// redis_exporter's: patterns whose matching keys are counted, as `watch: count`.
    #[arg(
        global = true,
        long = "count-keys",
        env = "REDIS_EXPORTER_COUNT_KEYS",
        value_delimiter = ','
    )]
    pub count_keys: Vec<String>,

    /// redis_exporter's: streams (globs, `db3=pattern`), as `watch: streams`.
    #[arg(
        global = true,
        long = "check-streams",
        env = "REDIS_EXPORTER_CHECK_STREAMS",
        value_delimiter = ','
    )]
    pub check_streams: Vec<String>,

    /// redis_exporter's: single streams, as `watch: streams`.
    #[arg(
        global = true,
        long = "check-single-streams",
        env = "REDIS_EXPORTER_CHECK_SINGLE_STREAMS",
        value_delimiter = ','
    )]
    pub check_single_streams: Vec<String>,

    /// redis_exporter's metric prefix: only its default, `redis`, is accepted (the alert rules
    /// and dashboards are written for it).
    #[arg(
        global = true,
        long = "namespace",
        env = "REDIS_EXPORTER_NAMESPACE",
        value_parser = only_redis_namespace,
        hide = true
    )]
    pub namespace: Option<String>,

    /// Web config file (Prometheus exporter-toolkit format): HTTPS and basic auth.
    #[arg(
        global = true,
        long = "web.config.file",
        env = "REDIS_LOOKOUT_WEB_CONFIG_FILE"
    )]
    pub web_config_file: Option<PathBuf>,

    /// How often each node is polled (default 5s).
    #[arg(global = true, long = "poll-interval", env = "REDIS_LOOKOUT_POLL_INTERVAL", value_parser = crate::config::parse_duration)]
    pub poll_interval: Option<Duration>,

    /// Deadline for one whole poll (default 3s, at most the interval).
    #[arg(global = true, long = "poll-timeout", env = "REDIS_LOOKOUT_POLL_TIMEOUT", value_parser = crate::config::parse_duration)]
    pub poll_timeout: Option<Duration>,
}

/// What to do instead of running the daemon.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the Prometheus rule file of the alert pack (thresholds from --config).
    Rules,
    /// Poll every target once, judge the alerts one poll can judge, print a report; exit 0 when
    /// all is well, 1 on a warning, 2 on a critical finding (or a target that cannot be polled).
    Check {
        /// Report format.
        #[arg(long, value_enum, default_value = "text")]
        format: ReportFormat,
    },
}

/// How `check` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

impl Cli {
    /// Parses the process arguments, accepting Go's `-flag` spelling for our long flags.
    /// Environment variables set to an empty string count as unset, as in redis_exporter (a
    /// deployment template with nothing to put in `REDIS_EXPORTER_LOG_FORMAT=` must not stop
    /// the start).
    pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
        let command = ignore_empty_env(<Cli as clap::CommandFactory>::command(), |name| {
            std::env::var_os(name).is_some_and(|v| v.is_empty())
        });
        let matches = command.try_get_matches_from(go_style(args))?;
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            // An empty value (`REDIS_PASSWORD=` from a template with nothing to put there) is
            // no value: as in redis_exporter, not an empty password sent to Redis.
            redis_addr: self.redis_addr.clone().filter(|v| !v.is_empty()),
            redis_user: self.redis_user.clone().filter(|v| !v.is_empty()),
            redis_password: self.redis_password.clone().filter(|v| !v.is_empty()),
            redis_password_file: self
                .redis_password_file
                .clone()
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            listen: self.listen.clone(),
            telemetry_path: self.telemetry_path.clone(),
            poll_interval: self.poll_interval,
            poll_timeout: self.poll_timeout,
            log_format: self.log_format,
            log_level: self
                .log_level
                .clone()
                .or_else(|| self.debug.unwrap_or(false).then(|| "debug".to_owned())),
            tls: crate::tls::TlsSettings {
                ca_file: self.tls_ca_cert_file.clone(),
                cert_file: self.tls_client_cert_file.clone(),
                key_file: self.tls_client_key_file.clone(),
                server_name: self.tls_server_name.clone(),
                insecure_skip_verify: self.skip_tls_verification.unwrap_or(false),
            },
            web_config_file: self.web_config_file.clone(),
            is_cluster: self.is_cluster.unwrap_or(false),
            connection_timeout: self.connection_timeout,
            redis_only_metrics: self.redis_only_metrics.unwrap_or(false),
            exporter_watch: crate::config::ExporterWatch {
                keys: listed(&[&self.check_keys, &self.check_single_keys]),
                count: listed(&[&self.count_keys]),
                streams: listed(&[&self.check_streams, &self.check_single_streams]),
            },
        }
    }
}

/// The non-empty entries of comma-separated flags, trimmed (`db0=a, db1=b`).
fn listed(lists: &[&Vec<String>]) -> Vec<String> {
    lists
        .iter()
        .flat_map(|list| list.iter())
        .map(|entry| entry.trim())
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `--connection-timeout`: a duration above zero.
fn positive_duration(raw: &str) -> Result<Duration, String> {
    match crate::config::parse_duration(raw)? {
        d if d.is_zero() => Err(format!("{raw:?}: must be above 0")),
        d => Ok(d),
    }
}

/// `--namespace`: redis_exporter's default only.
fn only_redis_namespace(raw: &str) -> Result<String, String> {
    if raw == "redis" || raw.is_empty() {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "{raw:?}: only the default namespace, redis, is supported (the alert rules and dashboards use redis_* names)"
        ))
    }
}

/// The `REDIS_EXPORTER_*` variables set in `vars` that this exporter does not read. redis_exporter
/// flags whose job is done differently here are refused by the parser; their environment forms
/// would otherwise be ignored in silence, and some protect `/metrics` (basic auth, HTTPS).
pub fn unread_exporter_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<String> {
    use clap::CommandFactory;
    let command = Cli::command();
    let read: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_env()?.to_str())
        .collect();
    let mut unread: Vec<String> = vars
        .into_iter()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("REDIS_EXPORTER_") && !read.contains(&name.as_str()))
        .collect();
    unread.sort();
    unread
}

/// `command` with the environment variable of every argument whose variable `is_empty` says is
/// empty no longer read.
fn ignore_empty_env(
    command: clap::Command,
    is_empty: impl Fn(&std::ffi::OsStr) -> bool,
) -> clap::Command {
    command.mut_args(|arg| {
        if arg.get_env().is_some_and(&is_empty) {
            arg.env(None)
        } else {
            arg
        }
    })
}

/// Rewrites `-redis.addr=x` or `-redis.addr x` to `--redis.addr…` when the name is one of ours.
fn go_style(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    use clap::CommandFactory;
    let command = Cli::command();
    // Long flags, and whether each needs a value (the next argument when not given with `=`).
    let longs: Vec<(String, bool)> = command
        .get_arguments()
        .filter_map(|a| {
            // A flag whose value is optional (a bool: `-is-cluster`, as Go's `flag` reads it)
            // never takes the next argument.
            let needs = a.get_action().takes_values()
                && a.get_num_args().is_none_or(|n| n.min_values() > 0);
            a.get_long().map(|l| (l.to_owned(), needs))
        })
        .chain(
            [("help", false), ("version", false), ("format", true)].map(|(l, n)| (l.to_owned(), n)),
        )
        .collect();
    let mut value_next = false;
    args.into_iter()
        .map(|arg| {
            let Some(text) = arg.to_str() else { return arg };
            // The value of the flag before (a password may start with '-').
            if std::mem::take(&mut value_next) {
                return arg;
            }
            if !text.starts_with('-') || text.len() < 3 {
                return arg;
            }
            let body = text.trim_start_matches('-');
            let name = body.split('=').next().unwrap_or("");
            if let Some((_, needs)) = longs.iter().find(|(l, _)| l == name) {
                value_next = *needs && !body.contains('=');
            }
            // Go's `-flag`: ours, or one redis_exporter has and we do not, which clap would
            // otherwise read as a cluster of one-letter flags and report as `-c`.
            if text.starts_with("--")
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            {
                arg
            } else {
                OsString::from(format!("-{text}"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags as the binary would get them (the program name first).
    fn parse(args: &[&str]) -> Cli {
        Cli::parse_args(args.iter().map(OsString::from)).unwrap()
    }

    #[test]
    fn redis_exporter_variables_not_read_here_are_named() {
        let vars = [
            ("REDIS_EXPORTER_BASIC_AUTH_PASSWORD", "s3cret"),
            ("REDIS_EXPORTER_LOG_FORMAT", "json"),
            ("REDIS_EXPORTER_EXPORT_CLIENT_LIST", "true"),
            ("REDIS_PASSWORD", "x"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        assert_eq!(
            unread_exporter_env(vars),
            [
                "REDIS_EXPORTER_BASIC_AUTH_PASSWORD",
                "REDIS_EXPORTER_EXPORT_CLIENT_LIST"
            ]
        );
    }

    #[test]
    fn empty_credentials_count_as_unset() {
        let cli = parse(&[
            "redis-lookout",
            "--redis.password=",
            "--redis.user=",
            "--redis.password-file=",
            "--redis.addr=",
        ]);
        let o = cli.overrides();
        assert!(o.redis_password.is_none() && o.redis_user.is_none());
        assert!(o.redis_password_file.is_none() && o.redis_addr.is_none());
    }

    #[test]
    fn a_go_flag_we_do_not_have_is_named_whole_and_values_are_left_alone() {
        let err = Cli::parse_args(["redis-lookout", "-check-key-groups=db0=x"].map(OsString::from))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("'--check-key-groups'"), "{err}");
        assert_eq!(
            go_style(["x", "--redis.password", "-pw-x", "-debug"].map(OsString::from)),
            ["x", "--redis.password", "-pw-x", "--debug"].map(OsString::from)
        );
    }

    #[test]
    fn go_single_dash_flags_are_accepted() {
        let cli = parse(&[
            "redis-lookout",
            "-redis.addr=redis://h:1",
            "-web.listen-address",
            ":9999",
            "-log-format=json",
        ]);
        assert_eq!(cli.redis_addr.as_deref(), Some("redis://h:1"));
        assert_eq!(cli.listen.as_deref(), Some(":9999"));
        assert_eq!(cli.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn redis_exporter_tls_flags_fill_the_tls_settings() {
        let cli = parse(&[
            "redis-lookout",
            "--tls-ca-cert-file=/ca.pem",
            "-tls-client-cert-file=/c.pem",
            "--tls-client-key-file",
            "/k.pem",
            "--skip-tls-verification",
            "--web.config.file=/web.yml",
        ]);
        let o = cli.overrides();
        assert_eq!(o.tls.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(o.tls.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(o.tls.key_file, Some(PathBuf::from("/k.pem")));
        assert!(o.tls.insecure_skip_verify);
        assert_eq!(o.web_config_file, Some(PathBuf::from("/web.yml")));
        let off = parse(&["redis-lookout", "--skip-tls-verification=false"]);
        assert!(!off.overrides().tls.insecure_skip_verify);
    }

    #[test]
    fn redis_exporter_behaviour_flags_are_read_and_a_bool_flag_takes_no_next_argument() {
        let cli = parse(&[
            "redis-lookout",
            "-is-cluster",
            "-redis.addr",
            "h:7000",
            "-debug",
            "-connection-timeout=1s",
            "-redis-only-metrics",
            "-include-system-metrics",
            "-ping-on-connect=true",
            "-set-client-name=false",
            "-exclude-latency-histogram-metrics",
            "-namespace=redis",
        ]);
        let o = cli.overrides();
        assert_eq!(o.redis_addr.as_deref(), Some("h:7000"));
        assert!(o.is_cluster && o.redis_only_metrics);
        assert_eq!(o.connection_timeout, Some(Duration::from_secs(1)));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        // --log-level wins over --debug; no --debug, no level of its own.
        let cli = parse(&["redis-lookout", "--debug", "--log-level=warn"]);
        assert_eq!(cli.overrides().log_level.as_deref(), Some("warn"));
        let o = parse(&["redis-lookout", "--debug=false"]).overrides();
        assert!(o.log_level.is_none() && !o.is_cluster && !o.redis_only_metrics);
        for bad in [
            "--namespace=app",
            "--connection-timeout=0s",
            "--is-cluster=maybe",
        ] {
            let err = Cli::parse_args(["redis-lookout", bad].map(OsString::from));
            assert!(err.is_err(), "{bad} accepted");
        }
        let vars = [
            "REDIS_EXPORTER_PING_ON_CONNECT",
            "REDIS_EXPORTER_NAMESPACE",
            "REDIS_EXPORTER_CHECK_KEYS",
            "REDIS_EXPORTER_COUNT_KEYS",
        ]
        .map(|k| (OsString::from(k), OsString::from("x")));
        assert!(unread_exporter_env(vars).is_empty());
    }

    #[test]
    fn redis_exporter_key_checks_become_watch_entries() {
        let o = parse(&[
            "redis-lookout",
            "-check-keys=db0=queue:*, db3=jobs:*",
            "-check-single-keys",
            "db1=counter",
            "--count-keys=session:*",
            "-check-streams=events:*",
            "-check-single-streams=db2=audit,",
        ])
        .overrides();
        let w = o.exporter_watch;
        assert_eq!(w.keys, ["db0=queue:*", "db3=jobs:*", "db1=counter"]);
        assert_eq!(w.count, ["session:*"]);
        assert_eq!(w.streams, ["events:*", "db2=audit"]);
    }

    #[test]
    fn unknown_flags_are_refused() {
        assert!(Cli::parse_args(["redis-lookout", "--no-such-flag"].map(OsString::from)).is_err());
    }
}
