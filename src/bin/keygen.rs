//! Fills a Redis with the generated keyspace mix (see `redis_lookout::keyspace::generate`), for
//! the benchmark and for trying the keyspace sampler by hand:
//! `keygen redis://127.0.0.1:6379 1000000`.

use clap::Parser;
use redis_lookout::keyspace::generate::fill;
use std::process::ExitCode;

/// Fills a Redis with the generated keyspace mix: 8 key families with known shares, sizes,
/// types and TTL rules (see `redis_lookout::keyspace::generate`).
#[derive(Parser)]
#[command(name = "keygen", version)]
struct Args {
    /// The Redis to fill.
    #[arg(default_value = "redis://127.0.0.1:6379")]
    url: String,
    /// How many keys to write.
    #[arg(default_value_t = 1_000_000)]
    keys: u64,
}

fn main() -> ExitCode {
    let Args { url, keys } = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("keygen: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        fill(&mut conn, keys, 2000).await
    });
    match result {
        Ok(()) => {
            println!("wrote {keys} keys");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("keygen: {}", err.kind_label_free());
            ExitCode::from(1)
        }
    }
}

trait Describe {
    fn kind_label_free(&self) -> String;
}

impl Describe for redis::RedisError {
    /// The error's category, not its text (which could echo a URL with a password).
    fn kind_label_free(&self) -> String {
        redis_lookout::error::PollError::from_redis(self).to_string()
    }
}
