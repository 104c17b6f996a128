//! Reading spec files from the controller's disk: one file, or every `*.yaml`/`*.yml` of a
//! directory. Parsing is `crate::spec::parse_files`.

use std::path::{Path, PathBuf};

use crate::spec::{self, MAX_SPEC_BYTES, Spec, SpecErrors};

/// Load one file, or every `*.yaml`/`*.yml` file of a directory (one cluster per file).
/// All problems of all files are returned together.
pub fn specs(path: &Path) -> Result<Vec<Spec>, SpecErrors> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| SpecErrors(vec![spec::file_error(path, format!("cannot read: {e}"))]))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml") | Some("yml")
                    )
            })
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(SpecErrors(vec![spec::file_error(
                path,
                "no *.yaml spec files in this directory",
            )]));
        }
        v
    } else {
        vec![path.to_owned()]
    };
    let read: Vec<(PathBuf, Result<Vec<u8>, String>)> = files
        .into_iter()
        .map(|f| {
            let bytes = read_bounded(&f).map_err(|e| e.to_string());
            (f, bytes)
        })
        .collect();
    spec::parse_files(read)
}

/// Read at most `MAX_SPEC_BYTES + 1` bytes, so a huge file costs nothing to refuse.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}
