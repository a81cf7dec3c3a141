//! Prints the BrokerCluster CRD as YAML, or writes it to the paths given as arguments.

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match mooring_crds::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        print!("{yaml}");
    }
    for path in paths {
        if let Err(e) = std::fs::write(&path, &yaml) {
            eprintln!("crdgen: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
