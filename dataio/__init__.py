"""Reading images and dataset folders: decoding, resizing, checks of unreadable or duplicate files."""
