//! The committed manifests stay in step with the code: `manifests/crd.yaml` is exactly what
//! `kadalu-operator crd` prints, and `manifests/operator.yaml` embeds the same CRD.

use std::path::Path;

fn manifest(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn committed_crd_matches_generated() {
    let generated = kadalu_operator::crd::crd_yaml().unwrap();
    assert!(
        manifest("crd.yaml") == generated,
        "manifests/crd.yaml is stale: run `cargo run -p kadalu-operator -- crd > manifests/crd.yaml`"
    );
}

#[test]
fn operator_yaml_embeds_the_crd() {
    let generated = kadalu_operator::crd::crd_yaml().unwrap();
    let op = manifest("operator.yaml");
    assert!(
        op.contains(generated.trim_end()),
        "manifests/operator.yaml does not contain the current CRD: regenerate its CRD section"
    );
}
