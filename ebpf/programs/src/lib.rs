#![no_std]
// Exists so that userspace can declare a build-dependency on this package (cache invalidation for
// aya-build), exactly like aya-template.
