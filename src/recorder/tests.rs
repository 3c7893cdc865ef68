//! HTTP tests of the recorder router, through tower without a socket, on a SQLite file.
