//! The `redis-lookout` binary: parse flags, load config, start logging, run the daemon.

use redis_lookout::alerts::{pack, render_rules, DEFAULT_RUNBOOK_BASE};
use redis_lookout::check::{check, render_text, worst};
use redis_lookout::cli::{Cli, Command, ReportFormat};
use redis_lookout::config::{Config, LogFormat};
use redis_lookout::daemon;
use std::process::ExitCode;

/// jemalloc rather than glibc's malloc: a thousand pollers allocating and freeing small
/// buffers on two worker threads fragment glibc's arenas, and RSS creeps (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process (rediss:// connections use rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();

    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    // The daemon's runtime and its SIGHUP listener first: a SIGHUP's default action ends the
    // process, and a deploy tool may send one (reload) right after a start, while the
    // configuration is still being read. One sent before the listener runs is taken then.
    let daemon = (cli.command.is_none() && !cli.check_config).then(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build();
        runtime.map(|rt| {
            let hangups = {
                let _in = rt.enter();
                daemon::Hangups::listen()
                    .inspect_err(|err| {
                        eprintln!("redis-lookout: warning: cannot listen for SIGHUP ({err}); reload with POST /-/reload");
                    })
                    .ok()
            };
            (rt, hangups)
        })
    });
    // Names only: a value may be a password.
    let unread = redis_lookout::cli::unread_exporter_env(std::env::vars_os());
    if !unread.is_empty() {
        let protects = unread
            .iter()
            .any(|v| v.contains("BASIC_AUTH") || v.contains("TLS_SERVER"));
        eprintln!(
            "redis-lookout: configuration error: {} {} redis_exporter's and not read here; unset {}{}",
            unread.join(", "),
            if unread.len() == 1 { "is" } else { "are" },
            if unread.len() == 1 { "it" } else { "them" },
            if protects {
                " (the exporter's own HTTPS and basic auth come from --web.config.file)"
            } else {
                " (README: Replacing redis_exporter)"
            }
        );
        return ExitCode::from(2);
    }
    let overrides = cli.overrides();
    let config = match Config::load(&overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("redis-lookout: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    match &cli.command {
        Some(Command::Rules) => {
            let (rules, base) = alert_rules(&config);
            print!("{}", render_rules(&rules, &base));
            return ExitCode::SUCCESS;
        }
        Some(Command::Check { format }) => return run_check(&config, *format),
        None => {}
    }
    if cli.check_config {
        // What would fail later as `auth`, said now. A warning, not an error: configs are
        // checked where their secrets are not (a CI job, a build host).
        for problem in config.unreadable_secrets() {
            eprintln!("redis-lookout: warning: {problem} (on this host)");
        }
        println!(
            "configuration is valid: listen {}, {} target(s): {}",
            config.listen,
            config.targets.len(),
            config
                .targets
                .iter()
                .map(|t| format!("{} ({})", t.name, t.url))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::SUCCESS;
    }
    if let Err(err) = init_logging(&config) {
        eprintln!("redis-lookout: configuration error: log level: {err}");
        return ExitCode::from(2);
    }
    // Not fatal at start (a secret may be mounted a moment later), but said now rather than
    // only as `auth` errors.
    for problem in config.unreadable_secrets() {
        tracing::warn!(%problem, "a password cannot be read; connections that need it will fail");
    }

    let (runtime, hangups) = match daemon {
        Some(Ok(started)) => started,
        Some(Err(err)) => {
            eprintln!("redis-lookout: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
        None => unreachable!("the daemon's runtime is made whenever it runs"),
    };
    runtime.block_on(async move {
        let listener = match redis_lookout::http::bind(config.listen) {
            Ok(l) => l,
            Err(err) => {
                eprintln!("redis-lookout: cannot listen on {}: {err}", config.listen);
                return ExitCode::from(1);
            }
        };
        // POST /-/reload and SIGHUP read the same file, flags and environment again.
        let reload = daemon::Reload {
            loader: std::sync::Arc::new(move || Config::load(&overrides)),
            hangups,
        };
        match daemon::run_with(config, Some(reload), listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("redis-lookout: {err}");
                ExitCode::from(1)
            }
        }
    })
}

/// The pack with the config's thresholds and runbook base, or the defaults.
fn alert_rules(config: &Config) -> (Vec<redis_lookout::alerts::AlertRule>, String) {
    match &config.alerting {
        Some(a) => (a.rules.clone(), a.runbook_base_url.clone()),
        None => (pack(), DEFAULT_RUNBOOK_BASE.to_owned()),
    }
}

fn run_check(config: &Config, format: ReportFormat) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("redis-lookout: cannot start the runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let (rules, base) = alert_rules(config);
    let findings = runtime.block_on(check(config, &rules, &base));
    match format {
        ReportFormat::Text => print!("{}", render_text(&findings)),
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&findings).unwrap_or_default()
        ),
    }
    ExitCode::from(worst(&findings).exit_code())
}

fn init_logging(config: &Config) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // Checked when the configuration was read (config::check_log_level).
    let filter: tracing_subscriber::filter::Targets =
        config.log_level.parse().map_err(|e| format!("{e}"))?;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let layer = match config.log_format {
        LogFormat::Json => layer.json().with_filter(filter).boxed(),
        LogFormat::Txt => layer.with_filter(filter).boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
