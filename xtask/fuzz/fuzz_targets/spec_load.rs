//! Any bytes given to the spec loader produce a spec or diagnostics: never a panic, a hang
//! or unbounded memory. A valid result must also survive a serialise/parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    match spoolkeeper::spec::parse(Path::new("fuzz.yaml"), data) {
        Ok(spec) => {
            let doc = spec.document();
            let text = yaml_serde_text(&doc);
            let again = spoolkeeper::spec::parse(Path::new("again.yaml"), text.as_bytes())
                .expect("a valid spec serialises to a valid spec");
            assert_eq!(again.document(), doc);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for d in &errors.0 {
                assert!(d.pos.line >= 1 && d.pos.col >= 1);
            }
        }
    }
});

fn yaml_serde_text(doc: &spoolkeeper::spec::Document) -> String {
    spoolkeeper::spec::to_yaml(doc).expect("serialises")
}
