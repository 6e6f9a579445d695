"""Request-reply patterns: the tutorial broker, Lazy Pirate, Paranoid Pirate, Majordomo."""
