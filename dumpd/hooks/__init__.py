"""The is-RAM hook slot and the discovery of hook plugins."""
