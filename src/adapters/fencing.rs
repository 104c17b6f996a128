//! The spec's fencing command (`fencing.command`), run by the controller: `{node}` and
//! `{host}` replaced in whole arguments; never passed to a shell.

/// The fencing argv for `node`, whose SSH host is `host`.
pub fn fence_argv(command: &[String], node: &str, host: &str) -> Vec<String> {
    command
        .iter()
        .map(|a| a.replace("{node}", node).replace("{host}", host))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_inside_arguments_only() {
        let cmd: Vec<String> = ["ipmitool", "-H", "bmc-{node}", "--", "{host} {node}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            fence_argv(&cmd, "node-a", "imap-a; reboot"),
            [
                "ipmitool",
                "-H",
                "bmc-node-a",
                "--",
                "imap-a; reboot node-a"
            ]
        );
    }
}
