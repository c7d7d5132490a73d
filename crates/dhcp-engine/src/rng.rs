//! Seeded randomness for xids, jitter and ACD delays. The seed comes from the
//! host (getrandom in the supervisor); the engine itself has no entropy source.
