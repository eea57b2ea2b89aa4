"""Measurement harnesses (not tests): each prints JSON; run by hand or on a GPU machine."""
