//! Files spoolkeeper writes on a host (Postfix lookup tables): argv only, the content goes on
//! stdin.

/// Write stdin to `path` atomically (a temporary file beside it, then `mv`), mode 0644. A
/// fixed script: the path is its positional argument, never part of the script.
pub fn write_file_argv(path: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        "umask 022 && cat > \"$1.sk-new\" && mv \"$1.sk-new\" \"$1\"".into(),
        "sh".into(),
        path.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_an_argument_not_script() {
        let a = write_file_argv("/etc/postfix/x; rm -rf /");
        assert_eq!(a[4], "/etc/postfix/x; rm -rf /");
        assert!(!a[2].contains("rm"));
    }
}
