//! Writes the `components.dapr.io` CRD YAML next to the crate (and into the Helm chart when it
//! exists), or prints it with `--stdout`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let yaml = statecar_crds::kube::crd_yaml();
    if std::env::args().any(|a| a == "--stdout") {
        print!("{yaml}");
        return Ok(());
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut targets = vec![crate_dir.join("components.dapr.io.yaml")];
    let chart = crate_dir.join("../charts/statecar/crds");
    if chart.is_dir() {
        targets.push(chart.join("components.dapr.io.yaml"));
    }
    for t in targets {
        std::fs::write(&t, &yaml)?;
        println!("wrote {}", t.display());
    }
    Ok(())
}
