//! relcache
