//! The committed CRD manifest must be exactly what the Rust types generate.

use std::path::Path;

const REGENERATE: &str = "cargo run -p mooring-crds --bin crdgen crds/brokercluster.yaml";

#[test]
fn committed_crd_yaml_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("brokercluster.yaml");
    let generated = mooring_crds::crd_yaml().expect("the CRD renders as YAML");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nGenerate it from the repository root with:\n    {REGENERATE}",
            path.display()
        )
    });
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .enumerate()
            .find(|(_, (c, g))| c != g)
            .map(|(i, (c, g))| {
                format!(
                    "first difference at line {}:\n  committed: {c}\n  generated: {g}",
                    i + 1
                )
            })
            .unwrap_or_else(|| {
                format!(
                    "one is a prefix of the other ({} vs {} lines)",
                    committed.lines().count(),
                    generated.lines().count()
                )
            });
        panic!(
            "{} is out of date with the BrokerCluster types ({first_difference}).\n\
             Regenerate it from the repository root with:\n    {REGENERATE}",
            path.display()
        );
    }
}
