//! Empty library target: lets `sentinel-agent` name this crate as a build dependency, so cargo
//! rebuilds the agent (which embeds the kernel object) when the programs change.
#![no_std]
