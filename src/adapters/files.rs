//! Files spoolkeeper writes on a host (Postfix lookup tables: the content goes on stdin) and
//! the scratch trees of `restore` and `drill` (staged mailbox copies, clone mountpoints), which
//! live under [`SCRATCH_DIR`] and are the only paths these argv may remove. Argv only.

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

/// Where spoolkeeper puts its scratch trees on a host (restore staging copies, clone
/// mountpoints); everything [`remove_scratch_argv`] may delete is under it.
pub const SCRATCH_DIR: &str = "/var/tmp/spoolkeeper";

fn check_scratch(path: &str) -> Result<(), String> {
    let rest = path
        .strip_prefix(SCRATCH_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| format!("`{path}` is not under {SCRATCH_DIR}"))?;
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("`{path}` is not a scratch path"));
    }
    Ok(())
}

/// `realpath PATH` (GNU and FreeBSD): where a mail path really is, symlinks resolved.
pub fn realpath_argv(path: &str) -> Result<Vec<String>, String> {
    if !path.starts_with('/') || path.chars().any(char::is_control) {
        return Err(format!("`{path}` is not an absolute path"));
    }
    Ok(vec!["realpath".into(), path.into()])
}

/// `test -d PATH`: exit 0 when it is a directory.
pub fn is_dir_argv(path: &str) -> Result<Vec<String>, String> {
    if !path.starts_with('/') || path.chars().any(char::is_control) {
        return Err(format!("`{path}` is not an absolute path"));
    }
    Ok(vec!["test".into(), "-d".into(), path.into()])
}

/// Make a fresh scratch directory (`mkdir -p -m 0711` of [`SCRATCH_DIR`], then `mkdir -m 0700`
/// of PATH: it fails when PATH exists, so two runs never share one).
pub fn make_scratch_argv(path: &str) -> Result<Vec<String>, String> {
    check_scratch(path)?;
    Ok(vec![
        "sh".into(),
        "-c".into(),
        "mkdir -p -m 0711 \"$1\" && chmod 0711 \"$1\" && mkdir -m 0700 \"$2\"".into(),
        "sh".into(),
        SCRATCH_DIR.into(),
        path.into(),
    ])
}

/// `chown -R UID:GID PATH` of a scratch tree (the staged copy is read as the mail user).
pub fn chown_scratch_argv(path: &str, uid: u32, gid: u32) -> Result<Vec<String>, String> {
    check_scratch(path)?;
    Ok(vec![
        "chown".into(),
        "-R".into(),
        format!("{uid}:{gid}"),
        path.into(),
    ])
}

/// `rm -rf PATH`, only under [`SCRATCH_DIR`].
pub fn remove_scratch_argv(path: &str) -> Result<Vec<String>, String> {
    check_scratch(path)?;
    Ok(vec!["rm".into(), "-rf".into(), path.into()])
}

/// `rmdir PATH` (an emptied clone mountpoint), only under [`SCRATCH_DIR`].
pub fn rmdir_scratch_argv(path: &str) -> Result<Vec<String>, String> {
    check_scratch(path)?;
    Ok(vec!["rmdir".into(), path.into()])
}

/// `tar -C DIR -cf - .`: a directory tree on stdout (POSIX ustar/pax, GNU and BSD tar).
pub fn tar_create_argv(dir: &str) -> Result<Vec<String>, String> {
    if !dir.starts_with('/') || dir.chars().any(char::is_control) {
        return Err(format!("`{dir}` is not an absolute path"));
    }
    Ok(vec![
        "tar".into(),
        "-C".into(),
        dir.into(),
        "-cf".into(),
        "-".into(),
        ".".into(),
    ])
}

/// `tar -C DIR -xpf -`: unpack stdin into a scratch directory.
pub fn tar_extract_argv(dir: &str) -> Result<Vec<String>, String> {
    check_scratch(dir)?;
    Ok(vec![
        "tar".into(),
        "-C".into(),
        dir.into(),
        "-xpf".into(),
        "-".into(),
    ])
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
