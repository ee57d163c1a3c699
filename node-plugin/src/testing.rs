//! Test-only stand-ins, see below.
