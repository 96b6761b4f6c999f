"""The OFA backbone and the SegOFA head as plain nn.Modules."""
