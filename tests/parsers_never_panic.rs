//! No panic on any byte from a remote host: every parser of remote output, and the SMTP reply
//! reader, fed arbitrary bytes and mutations of the recorded real outputs
//! (`tests/fixtures/`). A parser may refuse the input; it may not panic.

use std::time::Duration;

use proptest::prelude::*;
use spoolkeeper::adapters::{capabilities, dovecot, jail, postfix, postfix_cmd, zfs};
use spoolkeeper::state::lock::Holder;
use spoolkeeper::transport::smtp::Client;

fn fixture(p: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(p),
    )
    .unwrap_or_default()
}

/// Every parser on the same input, as text and as bytes.
fn parse_everything(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let _ = zfs::parse_listing_bytes(bytes);
    let _ = zfs::parse_holds(&text);
    let _ = zfs::missing_datasets(&text);
    let _ = zfs::only_missing_datasets(&text);
    let _ = zfs::hold_exists(&text);
    let _ = zfs::hold_missing(&text);
    let _ = zfs::detect_capabilities(true, &text, &text);
    let _ = zfs::detect_capabilities(false, "", &text);
    let _ = jail::parse_ezjail_list(&text);
    let _ = jail::parse_jls_json(&text);
    let _ = jail::parse_jls_verbose(&text);
    let _ = jail::parse_jls_plain(&text);
    let _ = postfix::parse_postconf(&text);
    let _ = postfix::detect_capabilities(&text);
    let _ = postfix::parse_postqueue(&text);
    let _ = postfix_cmd::parse_postsuper(&text);
    let _ = postfix_cmd::postcat_missing_id(&text);
    let _ = postfix_cmd::parse_postcat(bytes);
    let _ = dovecot::parse_fetch_message_ids(&text);
    let _ = capabilities::parse_which(&text);
    let _ = capabilities::parse_date(&text);
    let _ = Holder::decode(&text);
}

/// The SMTP reply reader on a stream holding `bytes` (a greeting, then EOF).
fn smtp_reply(bytes: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let _ = b.write_all(bytes).await;
        drop(b);
        let _ = Client::start(a, "x", Duration::from_secs(5)).await;
    });
}

fn corpus() -> Vec<Vec<u8>> {
    [
        "zfs-fuse/zfs-get-Hp-r.txt",
        "zfs-fuse/zfs-get-resume-token.txt",
        "openzfs/zfs-get-Hp-r.txt",
        "openzfs/zfs-usage.txt",
        "jail/ezjail-list-multi-ip.txt",
        "jail/jls-libxo-name-meta.json",
        "jail/jls-v.txt",
        "postfix/postqueue-j.jsonl",
        "postfix/postconf-n.txt",
        "postfix/postcat-do-hold.txt",
        "postfix/postcat-bh-one.txt",
        "postfix/postcat-postsuper-d.txt",
        "dovecot/doveadm-fetch-tab.txt",
    ]
    .iter()
    .map(|p| fixture(p))
    .filter(|b| !b.is_empty())
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        parse_everything(&bytes);
        smtp_reply(&bytes);
    }

    #[test]
    fn mutated_real_outputs(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..12),
    ) {
        let corpus = corpus();
        prop_assume!(!corpus.is_empty());
        let mut b = corpus[which.index(corpus.len())].clone();
        for (at, byte, op) in edits {
            if b.is_empty() {
                b.push(byte);
                continue;
            }
            let i = at.index(b.len());
            match op {
                0 => b[i] = byte,
                1 => b.insert(i, byte),
                _ => b.truncate(i),
            }
        }
        parse_everything(&b);
    }

    #[test]
    fn smtp_replies_near_the_grammar(
        lines in proptest::collection::vec(
            ("[0-9]{0,4}", prop::sample::select(vec!["-", " ", "", "\u{e9}", "\u{fffd}"]), "[ -~]{0,20}"),
            1..6,
        ),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut s = String::new();
        for (code, sep, text) in &lines {
            s.push_str(code);
            s.push_str(sep);
            s.push_str(text);
            s.push_str("\r\n");
        }
        let bytes = s.as_bytes();
        smtp_reply(&bytes[..cut.index(bytes.len() + 1)]);
    }
}

#[test]
fn the_corpus_is_there() {
    // the mutation test is only as good as its corpus: the recorded outputs must load
    assert_eq!(corpus().len(), 13, "fixtures missing: {}", corpus().len());
}
