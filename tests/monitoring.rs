//! The alerts of `deploy/monitoring`: `promtool check rules` and `promtool test rules` on the
//! PrometheusRule's groups. promtool comes with Debian's `prometheus` package (`.ci/run` installs
//! it); the test fails, not skips, without it (`PROMTOOL=...` picks another binary).
#![cfg(test)]

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str], dir: &Path) -> String {
    let bin = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{bin} is required for this test (apt-get install prometheus): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alerts_pass_promtool_check_and_their_unit_tests() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    let rule: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(src.join("prometheusrule.yaml")).unwrap()).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitoring-rules");
    std::fs::create_dir_all(&work).unwrap();
    // The PrometheusRule's spec is a Prometheus rule file (JSON is YAML).
    std::fs::write(work.join("rules.json"), rule["spec"].to_string()).unwrap();
    std::fs::copy(src.join("tests.yaml"), work.join("tests.yaml")).unwrap();
    let checked = promtool(&["check", "rules", "rules.json"], &work);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "tests.yaml"], &work);
    assert!(tested.contains("SUCCESS"), "{tested}");
}
