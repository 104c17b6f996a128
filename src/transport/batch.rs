//! Several commands in one round trip ([`Host::run_batch`], [`Host::run_slots`]): one script
//! fed to `sh -s` on stdin, each argv quoted, each output delimited by a per-call nonce.
//!
//! The script travels on stdin, never on the command line: the remote login shell only ever
//! parses the two words `sh -s`, so a csh/tcsh root shell (FreeBSD before 14) passes it
//! through unchanged (a multi-line `sh -c '…'` argument is refused by csh: `Unmatched '''`).

use super::host::{Host, HostError, Output, quote_posix};

/// Several commands in one round trip: one `sh` script runs each argv (each argument
/// quoted by [`quote_posix`]) in order, and marks the end of each command's stdout and
/// stderr with a per-call nonce and its exit status. Observation uses it to stay within two
/// round trips per host.
pub fn batch_script(cmds: &[Vec<String>], nonce: &str) -> String {
    let mut s = String::new();
    for (i, argv) in cmds.iter().enumerate() {
        let line: Vec<String> = argv.iter().map(|a| quote_posix(a)).collect();
        s.push_str(&line.join(" "));
        s.push_str(" </dev/null\n");
        s.push_str(&format!(
            "printf '\\n@@SK-{nonce}-%d-%d@@\\n' {i} $?\nprintf '\\n@@SK-{nonce}-{i}@@\\n' >&2\n"
        ));
    }
    s
}

/// Split the output of [`batch_script`] back into one [`Output`] per command. A command
/// whose marker is missing (the script was cut short) gets status `None`.
pub fn split_batch(n: usize, nonce: &str, stdout: &[u8], stderr: &[u8]) -> Vec<Output> {
    let mut outs = Vec::with_capacity(n);
    let mut rest_out = stdout;
    let mut rest_err = stderr;
    for i in 0..n {
        let prefix = format!("\n@@SK-{nonce}-{i}-");
        let (body, status, after) = match find(rest_out, prefix.as_bytes()) {
            Some(p) => {
                let tail = &rest_out[p + prefix.len()..];
                let end = find(tail, b"@@\n").unwrap_or(tail.len());
                let status = std::str::from_utf8(&tail[..end])
                    .ok()
                    .and_then(|s| s.parse::<i32>().ok());
                let next = (end + 3).min(tail.len());
                (&rest_out[..p], status, &tail[next..])
            }
            None => (rest_out, None, &rest_out[rest_out.len()..]),
        };
        rest_out = after;
        let emark = format!("\n@@SK-{nonce}-{i}@@\n");
        let (ebody, eafter) = match find(rest_err, emark.as_bytes()) {
            Some(p) => (&rest_err[..p], &rest_err[p + emark.len()..]),
            None => (rest_err, &rest_err[rest_err.len()..]),
        };
        rest_err = eafter;
        outs.push(Output {
            status,
            stdout: body.to_vec(),
            stderr: ebody.to_vec(),
        });
    }
    outs
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A nonce for [`batch_script`] markers: unlikely in any command's output.
pub fn batch_nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", t, std::process::id())
}

impl Host {
    /// Run several commands in ONE round trip (see [`batch_script`]). A transport error
    /// fails the whole batch; commands that exit non-zero do not.
    pub async fn run_batch(&self, cmds: &[Vec<String>]) -> Result<Vec<Output>, HostError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let nonce = batch_nonce();
        let script = batch_script(cmds, &nonce);
        let out = self
            .run_with_stdin(&["sh".to_string(), "-s".to_string()], script.as_bytes())
            .await?;
        Ok(split_batch(cmds.len(), &nonce, &out.stdout, &out.stderr))
    }
}

/// Commands for one round trip ([`Host::run_slots`]). Each [`Batch::push`] returns the
/// [`Slot`] its output comes back in, so a result is bound to its command by a handle, never
/// by counting positions.
#[derive(Debug, Default)]
pub struct Batch {
    cmds: Vec<Vec<String>>,
}

/// Where one command's output is in the [`BatchOutputs`] of its [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Add a command; its output will be at the returned slot.
    pub fn push(&mut self, argv: Vec<String>) -> Slot {
        self.cmds.push(argv);
        Slot(self.cmds.len() - 1)
    }

    pub fn commands(&self) -> &[Vec<String>] {
        &self.cmds
    }
}

/// The outputs of a [`Batch`], read by [`Slot`].
#[derive(Debug)]
pub struct BatchOutputs(Vec<Output>);

impl BatchOutputs {
    /// The output of the command pushed at `slot` (`None` if the batch ended before it).
    pub fn get(&self, slot: Slot) -> Option<&Output> {
        self.0.get(slot.0)
    }
}

impl Host {
    /// [`Host::run_batch`] of a [`Batch`]: one round trip, outputs by slot.
    pub async fn run_slots(&self, batch: &Batch) -> Result<BatchOutputs, HostError> {
        Ok(BatchOutputs(self.run_batch(batch.commands()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::host::{AnyHost, LocalHost, RoundTrips};

    #[tokio::test]
    async fn a_batch_keeps_each_commands_output_status_and_arguments() {
        let trips = RoundTrips::default();
        let h = Host::new("local", AnyHost::Local(LocalHost), &trips);
        let awkward = "a b'c\"$HOME;*\n\\!".to_string();
        let cmds = vec![
            vec!["printf".into(), "%s".into(), awkward.clone()],
            vec!["sh".into(), "-c".into(), "echo err >&2; exit 3".into()],
            vec!["printf".into(), "no newline".into()],
            vec!["true".into()],
        ];
        let outs = h.run_batch(&cmds).await.unwrap();
        assert_eq!(h.round_trips(), 1);
        assert_eq!(outs.len(), 4);
        assert_eq!(outs[0].stdout, awkward.as_bytes());
        assert_eq!(outs[0].status, Some(0));
        assert_eq!(outs[1].status, Some(3));
        assert_eq!(outs[1].stderr_text().trim(), "err");
        assert_eq!(outs[2].stdout_text(), "no newline");
        assert_eq!(outs[3].status, Some(0));
        assert!(outs[3].stdout.is_empty());
    }

    #[test]
    fn a_cut_short_batch_leaves_later_statuses_unknown() {
        let outs = split_batch(2, "n", b"hello\n@@SK-n-0-0@@\npartial", b"");
        assert_eq!(outs[0].status, Some(0));
        assert_eq!(outs[0].stdout, b"hello");
        assert_eq!(outs[1].status, None);
        assert_eq!(outs[1].stdout, b"partial");
    }

    /// What a login shell does with an SSH command line: `SHELL -c LINE`.
    fn through_login_shell(shell: &str, argv: &[String], stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let line = crate::transport::host::remote_command_line(argv);
        let mut child = std::process::Command::new(shell)
            .arg("-c")
            .arg(&line)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    #[ignore = "needs tcsh (a csh login shell, as root has on FreeBSD before 14): cargo xtask ci installs it and runs the ignored tests"]
    fn a_batch_passes_through_a_csh_login_shell() {
        let awkward = "a b'c\"$HOME;*!x".to_string();
        let cmds: Vec<Vec<String>> = vec![
            vec!["printf".into(), "%s".into(), awkward.clone()],
            vec!["sh".into(), "-c".into(), "echo err >&2; exit 3".into()],
            vec![
                "printf".into(),
                "%s|".into(),
                "!".into(),
                "!!".into(),
                "~".into(),
            ],
        ];
        let nonce = batch_nonce();
        let script = batch_script(&cmds, &nonce);
        for shell in ["sh", "tcsh", "csh"] {
            // what run_batch sends: `sh -s`, the script on stdin
            let out = through_login_shell(shell, &["sh".into(), "-s".into()], script.as_bytes());
            let outs = split_batch(cmds.len(), &nonce, &out.stdout, &out.stderr);
            assert_eq!(outs[0].stdout, awkward.as_bytes(), "{shell}: {outs:?}");
            assert_eq!(outs[1].status, Some(3), "{shell}");
            assert_eq!(outs[1].stderr, b"err\n", "{shell}");
            assert_eq!(outs[2].stdout, b"!|!!|~|", "{shell}");
        }
        // the form sent before, `sh -c SCRIPT`, does not survive csh
        let old = through_login_shell("tcsh", &["sh".into(), "-c".into(), script.clone()], b"");
        let outs = split_batch(cmds.len(), &nonce, &old.stdout, &old.stderr);
        assert_ne!(
            outs[0].stdout,
            awkward.as_bytes(),
            "tcsh took a multi-line argument"
        );
    }

    #[test]
    #[ignore = "needs tcsh (a csh login shell, as root has on FreeBSD before 14): cargo xtask ci installs it and runs the ignored tests"]
    fn every_fixed_script_reaches_the_program_unchanged_through_csh() {
        use crate::adapters::{files, postfix, zfs};
        let holder = crate::state::lock::Holder::me(jiff::Timestamp::now());
        let dt = zfs::DirectTarget {
            host: "node-b".into(),
            user: "root".into(),
            port: 22,
            known_hosts: Some("/root/.ssh/known hosts".into()),
            identity: None,
        };
        let send = zfs::send_argv("zdata/imap/students", Some("sk_1"), "sk_2", None);
        let recv = zfs::receive_argv("zdata", true);
        let argvs: Vec<Vec<String>> = vec![
            crate::state::lock::acquire_argv("univ-mail", &holder),
            crate::state::lock::read_argv("univ-mail"),
            crate::state::lock::token_acquire_argv("univ-mail", &holder),
            crate::state::lock::replace_argv("univ-mail", &holder),
            crate::state::lock::release_argv("univ-mail"),
            files::write_file_argv("/etc/postfix/spoolkeeper-bcc.regexp"),
            postfix::cat_table_argv("spoolkeeper-bcc.regexp"),
            zfs::destroy_each_argv(),
            zfs::send_to_file_argv("zdata/imap/students", "sk_1", "sk_2", "/var/db/x.zstream"),
            zfs::direct_pipeline_argv(&send, &zfs::direct_ssh_argv(&dt, &recv), None),
            zfs::direct_pipeline_argv(
                &send,
                &zfs::direct_ssh_argv(
                    &dt,
                    &zfs::receive_compressed_argv(&recv, Some(zfs::Compressor::Zstd)),
                ),
                Some(zfs::Compressor::Zstd),
            ),
            zfs::send_compressed_argv(&send, Some(zfs::Compressor::Lz4)),
            zfs::receive_compressed_argv(&recv, Some(zfs::Compressor::Lz4)),
        ];
        for argv in argvs {
            // the program replaced by one that prints its arguments back
            let mut probe: Vec<String> = vec!["printf".into(), "%s\\0".into()];
            probe.extend(argv.iter().cloned());
            for shell in ["sh", "tcsh"] {
                let out = through_login_shell(shell, &probe, b"");
                let got: Vec<String> = out
                    .stdout
                    .split(|&b| b == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                assert_eq!(
                    got,
                    argv,
                    "{shell}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}
