//! Where an instance's Postfix and Dovecot commands run (`instances.X.mail`): the one place
//! that turns a Postfix or Dovecot argv into the argv of the instance's own mail system.
//!
//! - `in: node` (default): unchanged, the node's Postfix and Dovecot.
//! - `in: runtime` with an `ezjail`/`jail` runtime: `jexec JAIL argv…`.
//! - `in: runtime` with an `exec` runtime: `prefix… argv…`, and with a Postfix
//!   `config_directory` (multi-instance) `-c DIR` after `postconf`, `postqueue`, `postsuper`,
//!   `postcat`, `postfix`, `postmap` and `-C DIR` after `sendmail`; with a Dovecot `config`,
//!   `doveadm -c FILE`.
//!
//! Every other adapter builds the node-wide argv; callers that act on an instance's mail pass
//! it through [`MailPlace::wrap`]. Pure.

use crate::spec::{MailAt, Runtime, Spec};

/// Postfix commands that take `-c config_directory`.
const POSTFIX_TOOLS: &[&str] = &[
    "postconf",
    "postqueue",
    "postsuper",
    "postcat",
    "postfix",
    "postmap",
    "postdrop",
];

/// How to reach one instance's own Postfix and Dovecot on a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailPlace {
    /// Prepended to every argv (`jexec JAIL`, or the spec's `prefix`).
    pub prefix: Vec<String>,
    /// The Postfix `config_directory` (`-c`), if the instance names one.
    pub postfix_config: Option<String>,
    /// The Dovecot configuration file (`doveadm -c`), if the instance names one.
    pub dovecot_config: Option<String>,
}

impl MailPlace {
    /// The instance's mail place, or `None` when the node's Postfix and Dovecot serve it
    /// (or the instance is not in the spec).
    pub fn of(spec: &Spec, instance: &str) -> Option<MailPlace> {
        let inst = spec
            .spec
            .instances
            .iter()
            .find(|(n, _)| n.as_str() == instance)
            .map(|(_, i)| i)?;
        let m = &inst.mail;
        if m.at == MailAt::Node {
            return None;
        }
        let prefix = match &inst.runtime {
            Runtime::Ezjail { jail } | Runtime::Jail { jail } => {
                vec!["jexec".to_owned(), jail.to_string()]
            }
            Runtime::Exec { .. } => m
                .prefix
                .iter()
                .map(|a| {
                    if a == "{instance}" {
                        instance.to_owned()
                    } else {
                        a.clone()
                    }
                })
                .collect(),
        };
        Some(MailPlace {
            prefix,
            postfix_config: m.postfix.as_ref().map(|p| p.config_directory.clone()),
            dovecot_config: m.dovecot.as_ref().map(|d| d.config.clone()),
        })
    }

    /// The instance's version of a node-wide Postfix, Dovecot or helper argv.
    pub fn wrap(&self, argv: Vec<String>) -> Vec<String> {
        let mut out = self.prefix.clone();
        let mut it = argv.into_iter();
        let Some(tool) = it.next() else {
            return out;
        };
        let config = match tool.as_str() {
            t if POSTFIX_TOOLS.contains(&t) => self.postfix_config.as_ref().map(|d| ("-c", d)),
            "sendmail" => self.postfix_config.as_ref().map(|d| ("-C", d)),
            "doveadm" => self.dovecot_config.as_ref().map(|d| ("-c", d)),
            _ => None,
        };
        out.push(tool);
        if let Some((flag, path)) = config {
            out.push(flag.to_owned());
            out.push(path.clone());
        }
        out.extend(it);
        out
    }

    /// Print spoolkeeper's table `file` of this Postfix's configuration directory: `cat` of
    /// the known directory, else the node-wide script (it asks `postconf` where it is).
    pub fn table_argv(&self, file: &str) -> Vec<String> {
        match &self.postfix_config {
            Some(dir) if self.prefix.is_empty() => {
                vec!["cat".into(), "--".into(), format!("{dir}/{file}")]
            }
            Some(dir) => self.wrap(vec!["cat".into(), "--".into(), format!("{dir}/{file}")]),
            None => self.wrap(crate::adapters::postfix::cat_table_argv(file)),
        }
    }
}

/// [`MailPlace::wrap`] where the place may be the node's (`None`: unchanged).
pub fn wrap(place: Option<&MailPlace>, argv: Vec<String>) -> Vec<String> {
    match place {
        Some(p) => p.wrap(argv),
        None => argv,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(instances: &str) -> Spec {
        let text = format!(
            r#"apiVersion: spoolkeeper/v1
kind: SpoolCluster
metadata: {{ name: t }}
spec:
  active: a
  nodes:
    a: {{ ssh: {{ host: 10.0.0.1 }}, pool: tank }}
    b: {{ ssh: {{ host: 10.0.0.2 }}, pool: tank }}
  instances:
{instances}
  snapshots: {{ prefix: sk, every: 1h, keep: {{ hourly: 24 }} }}
  replication: {{ every: 1d, rpo: 2d }}
"#
        );
        crate::spec::parse(std::path::Path::new("t.yaml"), text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_jailed_instance_runs_every_postfix_and_dovecot_command_through_jexec() {
        let s = spec(
            "    students: { dataset: imap/students, runtime: { kind: ezjail, jail: students }, mail: { in: runtime } }\n    staff: { dataset: imap/staff, runtime: { kind: jail, jail: staff_j }, mail: { in: runtime } }",
        );
        let p = MailPlace::of(&s, "students").unwrap();
        let all = [
            crate::adapters::postfix::postqueue_argv(),
            crate::adapters::postfix::flush_argv(),
            crate::adapters::postfix::reload_argv(),
            crate::adapters::postfix::postconf_argv(&["config_directory".into()]),
            crate::adapters::postfix::mail_version_argv(),
            crate::adapters::postfix_cmd::postsuper_delete_queued_argv(),
            crate::adapters::postfix_cmd::sendmail_bs_argv(),
            crate::adapters::dovecot::user_argv("alice@students.lab").unwrap(),
            crate::adapters::files::write_file_argv("/etc/postfix/sk_bcc"),
        ];
        for argv in all {
            let w = p.wrap(argv.clone());
            assert_eq!(&w[..2], &v(&["jexec", "students"])[..], "{w:?}");
            assert_eq!(&w[2..], &argv[..], "nothing else changes in a jail: {w:?}");
        }
        assert_eq!(
            p.table_argv("sk_bcc")[..3],
            v(&["jexec", "students", "sh"])[..]
        );
        let q = MailPlace::of(&s, "staff").unwrap();
        assert_eq!(
            q.wrap(v(&["postqueue", "-j"])),
            v(&["jexec", "staff_j", "postqueue", "-j"])
        );
    }

    #[test]
    fn a_multi_instance_postfix_gets_its_config_directory_and_dovecot_its_config() {
        let s = spec(
            "    staff: { dataset: imap/staff, runtime: { kind: exec, start: [s], stop: [t], status: [u] }, mail: { in: runtime, postfix: { config_directory: /etc/postfix-staff }, dovecot: { config: /etc/dovecot/staff.conf } } }\n    students: { dataset: imap/students, runtime: { kind: exec, start: [s], stop: [t], status: [u] } }",
        );
        assert_eq!(MailPlace::of(&s, "students"), None, "in: node by default");
        let p = MailPlace::of(&s, "staff").unwrap();
        assert_eq!(
            p.wrap(v(&["postqueue", "-j"])),
            v(&["postqueue", "-c", "/etc/postfix-staff", "-j"])
        );
        assert_eq!(
            p.wrap(v(&["postsuper", "-d", "-"])),
            v(&["postsuper", "-c", "/etc/postfix-staff", "-d", "-"])
        );
        assert_eq!(
            p.wrap(v(&["postfix", "reload"])),
            v(&["postfix", "-c", "/etc/postfix-staff", "reload"])
        );
        assert_eq!(
            p.wrap(v(&["sendmail", "-bs"])),
            v(&["sendmail", "-C", "/etc/postfix-staff", "-bs"])
        );
        assert_eq!(
            p.wrap(v(&["doveadm", "user", "x"])),
            v(&["doveadm", "-c", "/etc/dovecot/staff.conf", "user", "x"])
        );
        // helpers are not Postfix commands
        assert_eq!(p.wrap(v(&["sh", "-c", "x"])), v(&["sh", "-c", "x"]));
        assert_eq!(
            p.table_argv("sk_bcc"),
            v(&["cat", "--", "/etc/postfix-staff/sk_bcc"])
        );
    }

    #[test]
    fn an_exec_prefix_comes_first_and_names_the_instance() {
        let s = spec(
            "    staff: { dataset: imap/staff, runtime: { kind: exec, start: [s], stop: [t], status: [u] }, mail: { in: runtime, prefix: [chroot, \"/srv/{instance}\"] } }",
        );
        let p = MailPlace::of(&s, "staff").unwrap();
        assert_eq!(
            p.prefix,
            v(&["chroot", "/srv/{instance}"]),
            "only whole arguments"
        );
        let s = spec(
            "    staff: { dataset: imap/staff, runtime: { kind: exec, start: [s], stop: [t], status: [u] }, mail: { in: runtime, prefix: [/usr/local/bin/in-instance, \"{instance}\"] } }",
        );
        let p = MailPlace::of(&s, "staff").unwrap();
        assert_eq!(
            p.wrap(v(&["postqueue", "-j"])),
            v(&["/usr/local/bin/in-instance", "staff", "postqueue", "-j"])
        );
    }
}
