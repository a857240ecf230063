//! The committed CRD is what the code generates: `tokensource-operator crd > crds/tokensource.dev_tokensources.yaml`,
//! and the Helm chart carries the same.

#![cfg(test)]

#[test]
fn committed_crd_matches_the_code() {
    let generated = tokensource_operator::crd::crd_yaml().unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/tokensource.dev_tokensources.yaml");
    let committed = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        committed == generated,
        "crds/tokensource.dev_tokensources.yaml is stale; regenerate it with `cargo run -- crd > crds/tokensource.dev_tokensources.yaml`"
    );
}

/// The Helm chart installs the same CRD (a copy, as a chart reads only its own files).
#[test]
fn the_chart_carries_the_same_crd() {
    let generated = tokensource_operator::crd::crd_yaml().unwrap();
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/charts/tokensource-operator/files/tokensource.dev_tokensources.yaml");
    let copy = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        copy == generated,
        "the chart's copy of the CRD is stale; regenerate it with `cargo run -- crd > charts/tokensource-operator/files/tokensource.dev_tokensources.yaml`"
    );
}
