//! The spec's `notify.command`, run by the controller for events an operator must act on:
//! `{cluster}` replaced in whole arguments, the event as one JSON object on stdin; never
//! passed to a shell.

/// The notification argv for `cluster`.
pub fn notify_argv(command: &[String], cluster: &str) -> Vec<String> {
    command
        .iter()
        .map(|a| a.replace("{cluster}", cluster))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_is_replaced_inside_arguments_and_nothing_is_a_shell() {
        let cmd: Vec<String> = ["/usr/local/bin/page", "--topic=sk-{cluster}", "$(reboot)"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            notify_argv(&cmd, "univ"),
            ["/usr/local/bin/page", "--topic=sk-univ", "$(reboot)"]
        );
    }
}
