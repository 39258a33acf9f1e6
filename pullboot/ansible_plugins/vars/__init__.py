"""Vars plugins (a package only so that the files ship in the wheel; ansible skips __init__)."""
