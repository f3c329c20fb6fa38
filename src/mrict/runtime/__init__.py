"""Device, precision, seeding, distributed and checkpoint helpers shared by every stage."""
