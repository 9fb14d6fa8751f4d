"""What the tests share: real services (PostgreSQL, S3, a browser), relay processes, worlds of parties, synthetic
records and the crash driver. Test modules import from here, never from one another."""
