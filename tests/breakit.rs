//! Throwaway adversarial experiments (to be deleted).
#![allow(dead_code, unused_imports)]
mod common;
#[test]
fn smoke() {}
