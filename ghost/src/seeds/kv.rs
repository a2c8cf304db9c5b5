//! `seed.kv`: key-value state (in memory, bounded in keys and value size).

use std::collections::BTreeMap;

use shared::envelope::Args;

use super::{OperationSpec, Seed, SeedOutput};

pub struct Kv {
    map: BTreeMap<String, String>,
    max_keys: usize,
    max_value: usize,
}

impl Kv {
    pub fn new(max_keys: usize, max_value: usize) -> Kv {
        Kv {
            map: BTreeMap::new(),
            max_keys,
            max_value,
        }
    }
}

static OPS: &[OperationSpec] = &[
    OperationSpec::new("put", "Set key to value")
        .args(&["key", "value"])
        .required(&["key"]),
    OperationSpec::new("get", "Read a key")
        .args(&["key"])
        .required(&["key"]),
    OperationSpec::new("delete", "Remove a key")
        .args(&["key"])
        .required(&["key"]),
    OperationSpec::new("list", "List keys, optionally by prefix").args(&["prefix"]),
];

impl Seed for Kv {
    fn id(&self) -> &'static str {
        "seed.kv"
    }
    fn name(&self) -> &'static str {
        "KV (temporary in-memory)"
    }
    fn description(&self) -> String {
        "Temporary key-value state storage seed for control-plane persistence".into()
    }
    fn operations(&self) -> &'static [OperationSpec] {
        OPS
    }

    fn execute(&mut self, operation: &str, args: &Args) -> SeedOutput {
        let key = args.get("key").map(|k| k.trim()).unwrap_or("");
        match operation.trim() {
            "put" | "get" | "delete" if key.is_empty() => SeedOutput::error(1, "missing key\n"),
            "put" => {
                let value = args.get("value").cloned().unwrap_or_default();
                if value.len() > self.max_value {
                    return SeedOutput::error(
                        1,
                        format!(
                            "value of {} bytes exceeds the limit of {}\n",
                            value.len(),
                            self.max_value
                        ),
                    );
                }
                if !self.map.contains_key(key) && self.map.len() >= self.max_keys {
                    return SeedOutput::error(
                        1,
                        format!("key limit of {} reached\n", self.max_keys),
                    );
                }
                self.map.insert(key.to_owned(), value);
                SeedOutput::ok(format!("ok put key={key}\n"))
            }
            "get" => match self.map.get(key) {
                Some(v) => SeedOutput::ok(format!("{v}\n")),
                None => SeedOutput::error(1, format!("missing key={key}\n")),
            },
            "delete" => {
                self.map.remove(key);
                SeedOutput::ok(format!("ok delete key={key}\n"))
            }
            "list" => {
                let prefix = args.get("prefix").map(|p| p.trim()).unwrap_or("");
                let mut out = String::new();
                for k in self.map.keys().filter(|k| k.starts_with(prefix)) {
                    out.push_str(k);
                    out.push('\n');
                }
                if out.is_empty() {
                    out.push('\n');
                }
                SeedOutput::ok(out)
            }
            _ => SeedOutput::error(1, "unknown action\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(kv: &[(&str, &str)]) -> Args {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn put_get_delete_list_and_limits() {
        let mut kv = Kv::new(2, 4);
        assert_eq!(
            kv.execute("put", &a(&[("key", "b"), ("value", "1")]))
                .stdout,
            b"ok put key=b\n"
        );
        kv.execute("put", &a(&[("key", "a"), ("value", "2")]));
        assert_eq!(kv.execute("get", &a(&[("key", "a")])).stdout, b"2\n");
        assert_eq!(kv.execute("list", &Args::new()).stdout, b"a\nb\n");
        assert!(!kv
            .execute("put", &a(&[("key", "c"), ("value", "x")]))
            .succeeded());
        assert!(!kv
            .execute("put", &a(&[("key", "a"), ("value", "12345")]))
            .succeeded());
        assert_eq!(
            kv.execute("delete", &a(&[("key", "a")])).stdout,
            b"ok delete key=a\n"
        );
        let miss = kv.execute("get", &a(&[("key", "a")]));
        assert_eq!(
            (miss.exit_code, miss.stderr),
            (1, b"missing key=a\n".to_vec())
        );
    }
}
