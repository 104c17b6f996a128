//! `cargo xtask demo`: the main job, shown end to end.

use crate::util::{cargo, run};

pub fn main(_keep: bool) -> Result<(), String> {
    let cargo = cargo();
    run(
        "build",
        &cargo,
        &["build", "--quiet", "--bin", "spoolkeeper"],
    )?;
    for spec in ["examples/univ.yaml", "examples/lab.yaml"] {
        if crate::util::root().join(spec).exists() {
            run(
                &format!("validate {spec}"),
                &cargo,
                &[
                    "run",
                    "--quiet",
                    "--bin",
                    "spoolkeeper",
                    "--",
                    "validate",
                    "-f",
                    spec,
                ],
            )?;
        }
    }
    Ok(())
}
