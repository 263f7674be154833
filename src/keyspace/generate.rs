//! A keyspace generator with a known mix, for the sampler's tests and the benchmark: eight key
//! families in the operators' naming style, with known shares, types, sizes and TTL rules,
//! including ids that must collapse and keys without a TTL under a `must_expire` prefix.

use redis::aio::MultiplexedConnection;

/// One family of generated keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    /// The pattern auto-discovery should find for it.
    pub pattern: &'static str,
    /// Twentieths of the keyspace.
    pub share: u64,
    pub kind: &'static str,
    /// TTL in seconds; 0 for keys that never expire.
    pub ttl: u64,
}

/// The mix: shares add up to 20 twentieths.
pub const FAMILIES: &[Family] = &[
    Family {
        pattern: "session:auth:*",
        share: 4,
        kind: "string",
        ttl: 1800,
    },
    Family {
        pattern: "cache:user:*:profile",
        share: 4,
        kind: "hash",
        ttl: 3600,
    },
    Family {
        pattern: "rl:*:*",
        share: 3,
        kind: "string",
        ttl: 600,
    },
    Family {
        pattern: "lock:product:*",
        share: 1,
        kind: "string",
        ttl: 300,
    },
    Family {
        pattern: "saga:*",
        share: 2,
        kind: "hash",
        ttl: 0,
    },
    Family {
        pattern: "queue:notification:*",
        share: 2,
        kind: "list",
        ttl: 0,
    },
    Family {
        pattern: "cart:*",
        share: 2,
        kind: "set",
        ttl: 86400,
    },
    Family {
        pattern: "session:legacy:*",
        share: 2,
        kind: "string",
        ttl: 0,
    },
];

/// The family of the `i`-th generated key.
pub fn family_of(i: u64) -> &'static Family {
    let mut slot = i % 20;
    for family in FAMILIES {
        if slot < family.share {
            return family;
        }
        slot -= family.share;
    }
    &FAMILIES[0]
}

/// The `i`-th key's name.
pub fn key_name(i: u64) -> String {
    let f = family_of(i);
    match f.pattern {
        "session:auth:*" => format!(
            "session:auth:{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            i,
            i % 0xffff,
            i % 0xfff,
            (i * 7) % 0xfff,
            i * 31
        ),
        "cache:user:*:profile" => format!("cache:user:{i}:profile"),
        "rl:*:*" => format!(
            "rl:10.{}.{}.{}:{}",
            (i >> 16) % 256,
            (i >> 8) % 256,
            i % 256,
            28_000_000 + i % 60
        ),
        "lock:product:*" => format!("lock:product:{i}"),
        "saga:*" => format!("saga:{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        "queue:notification:*" => format!("queue:notification:{i}"),
        "cart:*" => format!("cart:{i}"),
        _ => format!("session:legacy:{i}"),
    }
}

/// Writes keys `0..n` with pipelines of `batch` keys.
pub async fn fill(conn: &mut MultiplexedConnection, n: u64, batch: u64) -> redis::RedisResult<()> {
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let mut pipe = redis::pipe();
        for i in start..end {
            let f = family_of(i);
            let key = key_name(i);
            match f.kind {
                "hash" => {
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg("name")
                        .arg(format!("user-{i}"))
                        .arg("plan")
                        .arg("pro")
                        .arg("since")
                        .arg(i)
                        .ignore();
                }
                "list" => {
                    pipe.cmd("RPUSH")
                        .arg(&key)
                        .arg(&["a", "b", "c", "d", "e"])
                        .ignore();
                }
                "set" => {
                    pipe.cmd("SADD").arg(&key).arg(&[i, i + 1, i + 2]).ignore();
                }
                _ => {
                    let value = if f.pattern == "session:auth:*" {
                        "x".repeat(120)
                    } else {
                        i.to_string()
                    };
                    pipe.cmd("SET").arg(&key).arg(value).ignore();
                }
            }
            if f.ttl > 0 {
                pipe.cmd("EXPIRE").arg(&key).arg(f.ttl).ignore();
            }
        }
        let () = pipe.query_async(conn).await?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::grouping::Grouper;

    #[test]
    fn shares_add_up_and_names_group_to_their_patterns() {
        assert_eq!(FAMILIES.iter().map(|f| f.share).sum::<u64>(), 20);
        let mut g = Grouper::new(&[], true, ':', 100);
        for i in 0..2000 {
            assert_eq!(
                g.group(key_name(i).as_bytes()),
                family_of(i).pattern,
                "key {}",
                key_name(i)
            );
        }
    }
}
