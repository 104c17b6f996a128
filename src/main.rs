//! The `spoolkeeper` binary: parses the command line and hands over to [`spoolkeeper::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    spoolkeeper::cli::main()
}
