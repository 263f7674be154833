//! Fills a Redis with the generated keyspace mix (see `redis_lookout::keyspace::generate`), for
//! the benchmark and for trying the keyspace sampler by hand:
//! `keygen redis://127.0.0.1:6379 1000000`.

use redis_lookout::keyspace::generate::fill;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let keys: u64 = match args.next().map(|n| n.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("usage: keygen [redis-url] [number of keys]");
            return ExitCode::from(2);
        }
    };
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
