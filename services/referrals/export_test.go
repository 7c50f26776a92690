package referrals

// SetExpireBatch sets how many holds a sweep expires in one transaction,
// so that a test can make a backlog span several.
func (s *Server) SetExpireBatch(n int) { s.expireBatch = n }

// DaysBetween is daysBetween, for the tests of how days are counted.
var DaysBetween = daysBetween
