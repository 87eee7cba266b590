//! The command line: argument definitions and one module per subcommand.

pub mod bench;
