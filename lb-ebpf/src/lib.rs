//! What lb's XDP program is built on and the floor programs share with it:
//! access to the frame behind the shared parser's `Frame` trait.
#![no_std]
// Lints beyond clippy's default for the product's code (the set and why:
// docs/VERIFICATION.md, "Static analysis"). Every exception is an
// `#[expect(lint, reason = "...")]` at the narrowest scope.
#![warn(
    clippy::allow_attributes,
    clippy::allow_attributes_without_reason,
    clippy::dbg_macro,
    clippy::mem_forget,
    clippy::todo,
    clippy::unimplemented,
    clippy::unnecessary_safety_comment,
    clippy::unnecessary_safety_doc,
    clippy::unwrap_used
)]

pub mod frame;
