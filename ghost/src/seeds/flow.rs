//! `seed.flow`: deterministic control flow (edgectl's outputs), plus `sleep` and `fail` for
//! tests of timeouts and failure handling.

use std::time::Duration;

use shared::envelope::Args;

use super::{OperationSpec, Seed, SeedOutput};

pub struct Flow {
    max_sleep_ms: u64,
}

impl Flow {
    pub fn new(max_sleep_ms: u64) -> Flow {
        Flow { max_sleep_ms }
    }
}

static OPS: &[OperationSpec] = &[
    OperationSpec::new("status", "Report ok"),
    OperationSpec::new("echo", "Echo the arguments, keys sorted").open(),
    OperationSpec::new("step", "Advance a named step: init, plan or apply")
        .args(&["name"])
        .required(&["name"]),
    OperationSpec::new("sleep", "Sleep for ms milliseconds (bounded)")
        .args(&["ms"])
        .required(&["ms"]),
    OperationSpec::new("fail", "Fail with exit code `code` (default 1)").args(&["code", "message"]),
];

impl Seed for Flow {
    fn id(&self) -> &'static str {
        "seed.flow"
    }
    fn name(&self) -> &'static str {
        "Flow"
    }
    fn description(&self) -> String {
        "Deterministic control-flow seed".into()
    }
    fn operations(&self) -> &'static [OperationSpec] {
        OPS
    }

    fn execute(&mut self, operation: &str, args: &Args) -> SeedOutput {
        match operation {
            "status" => SeedOutput::ok("flow status: ok\n"),
            "echo" if args.is_empty() => SeedOutput::ok("flow echo: {}\n"),
            "echo" => {
                let body: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                SeedOutput::ok(format!("flow echo: {}\n", body.join(",")))
            }
            "step" => {
                let name = args.get("name").map(|s| s.trim()).unwrap_or("");
                let next = match name {
                    "init" => "ready",
                    "plan" => "queued",
                    "apply" => "complete",
                    _ => return SeedOutput::error(2, "flow step: unknown\n"),
                };
                SeedOutput::ok(format!("flow step: {name} -> {next}\n"))
            }
            "sleep" => match args.get("ms").and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(ms) if ms <= self.max_sleep_ms => {
                    std::thread::sleep(Duration::from_millis(ms));
                    SeedOutput::ok(format!("flow sleep: {ms}ms\n"))
                }
                Some(ms) => SeedOutput::error(
                    2,
                    format!(
                        "flow sleep: {ms}ms exceeds the limit of {}ms\n",
                        self.max_sleep_ms
                    ),
                ),
                None => SeedOutput::error(2, "flow sleep: ms must be a whole number\n"),
            },
            "fail" => {
                let code = args
                    .get("code")
                    .and_then(|c| c.trim().parse::<u32>().ok())
                    .unwrap_or(1);
                let msg = args
                    .get("message")
                    .map(String::as_str)
                    .unwrap_or("requested");
                SeedOutput::error(code, format!("flow fail: {msg}\n"))
            }
            other => SeedOutput::error(64, format!("unknown action: {other}\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kv: &[(&str, &str)]) -> Args {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn outputs_match_edgectl() {
        let mut f = Flow::new(10);
        assert_eq!(
            f.execute("status", &Args::new()).stdout,
            b"flow status: ok\n"
        );
        assert_eq!(
            f.execute("echo", &args(&[("msg", "hi"), ("a", "1")]))
                .stdout,
            b"flow echo: a=1,msg=hi\n"
        );
        assert_eq!(f.execute("echo", &Args::new()).stdout, b"flow echo: {}\n");
        assert_eq!(
            f.execute("step", &args(&[("name", " plan ")])).stdout,
            b"flow step: plan -> queued\n"
        );
        let bad = f.execute("step", &args(&[("name", "x")]));
        assert_eq!(
            (bad.exit_code, bad.stderr.as_slice()),
            (2, &b"flow step: unknown\n"[..])
        );
        let fail = f.execute("fail", &args(&[("code", "7")]));
        assert!(!fail.succeeded());
        assert_eq!(fail.exit_code, 7);
        assert!(!f.execute("sleep", &args(&[("ms", "11")])).succeeded());
        assert!(f.execute("sleep", &args(&[("ms", "1")])).succeeded());
    }
}
