"""Many runs → one report: collecting runs, the paired-bootstrap verdict, Pareto and calibration."""
