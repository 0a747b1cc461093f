pub mod portkey;
