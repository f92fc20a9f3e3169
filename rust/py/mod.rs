//! The Python bindings: conversion, GIL release and exception mapping over the core,
//! nothing more.

pub mod connector;
pub mod errors;
pub mod instance;
pub mod native;
pub mod registry;
pub mod runtime;
pub mod watch;
