//! Quoting for the remote login shell: how an argv crosses SSH as one command line and is
//! parsed back into the same argv (tested against a real `sh` in `crate::transport::host`).

/// Quote one argument for a POSIX shell. Safe characters pass unquoted; everything else is
/// wrapped in single quotes, with `'` written as `'\''` and `!` as `'\!'` (so csh's history
/// expansion never sees a bare `!`). Empty strings become `''`.
pub fn quote_posix(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        return arg.to_string();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        match c {
            '\'' => out.push_str("'\\''"),
            '!' => out.push_str("'\\!'"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The remote command line for an argv: each element quoted, joined by spaces.
pub fn remote_command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| quote_posix(a))
        .collect::<Vec<_>>()
        .join(" ")
}
